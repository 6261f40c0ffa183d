"""What runs inside the training process: the hooks and what they measure.

``hooks`` (``attach``, ``HealthMonitor``), the activation functions it sees (``functional``),
the operator of compiled graphs (``compiled``), the ranks' statistics combined
(``distributed``), the layer names (``naming``), the audio clips a training hands over
(``audio_samples``) and ``signals``, one module per measured quantity.

Imports nothing else of ``monitor`` but the shared modules (``monitor.durability``): what the
training sends reaches the driver inside its reports, never through an import.
"""
