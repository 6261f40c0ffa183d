"""A zoo of model code nobody here wrote, built from configurations (no weights), for
activation coverage and hook overhead: transformers, timm and PyTorch's recurrent layers."""
