"""The zoo's models: small configurations of third-party model code, and an input for each.

Every entry builds a fresh model (seeded) and a batch; ``family`` groups them for the
overhead goals (transformer, convolutional, vocoder, recurrent). transformers and timm are
bench/test extras (``pip install 'voice-monitor[zoo]'``), never runtime dependencies.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from bench.heldout.families import import_timm


@dataclass(frozen=True)
class Entry:
    name: str
    family: str  # transformer | convolutional | vocoder | recurrent
    build: Callable[[], tuple[nn.Module, Callable[[nn.Module], torch.Tensor]]]


def _transformers() -> Any:
    import_timm()  # torchvision's compiled ops may not load beside the CPU torch: see there
    import transformers
    return transformers


def _hidden(out: Any) -> torch.Tensor:
    """One tensor to take a loss on, from any model output."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        return _hidden(out[0])
    for key in ("last_hidden_state", "audio_values", "waveforms", "waveform", "logits"):
        value = getattr(out, key, None)
        if isinstance(value, torch.Tensor):
            return value
    return _hidden(out.to_tuple())


def _text(model_cls: str, config_cls: str, **config: Any):
    def build():
        t = _transformers()
        model = getattr(t, model_cls)(getattr(t, config_cls)(**config))
        ids = torch.randint(0, config.get("vocab_size", 1000), (2, 24))
        return model, lambda m: _hidden(m(input_ids=ids))
    return build


SMALL = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
             intermediate_size=128, vocab_size=1000)


def _bert():
    return _text("BertModel", "BertConfig", **SMALL)()


def _gpt2():
    return _text("GPT2Model", "GPT2Config", n_embd=64, n_layer=2, n_head=4, vocab_size=1000,
                 n_positions=64, bos_token_id=0, eos_token_id=0)()


def _llama():
    return _text("LlamaModel", "LlamaConfig", **SMALL, num_key_value_heads=2)()


def _t5():
    return _text("T5EncoderModel", "T5Config", d_model=64, d_ff=128, num_layers=2,
                 num_heads=4, d_kv=16, vocab_size=1000)()


def _wav2vec2():
    t = _transformers()
    config = t.Wav2Vec2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                              intermediate_size=128, conv_dim=(32, 32, 32),
                              conv_stride=(5, 2, 2), conv_kernel=(10, 3, 3),
                              num_feat_extract_layers=3, feat_extract_norm="layer",
                              do_stable_layer_norm=True, num_conv_pos_embeddings=16,
                              num_conv_pos_embedding_groups=4)
    model = t.Wav2Vec2Model(config)
    audio = torch.randn(2, 4000)
    return model, lambda m: _hidden(m(audio))


def _speecht5_hifigan():
    t = _transformers()
    config = t.SpeechT5HifiGanConfig(model_in_dim=16, upsample_initial_channel=32,
                                     upsample_rates=[4, 4], upsample_kernel_sizes=[8, 8],
                                     resblock_kernel_sizes=[3, 7],
                                     resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5]],
                                     normalize_before=False)
    model = t.SpeechT5HifiGan(config)
    mel = torch.randn(2, 32, 16)
    return model, lambda m: _hidden(m(mel))


def _fastspeech2_hifigan():
    t = _transformers()
    config = t.FastSpeech2ConformerHifiGanConfig(
        model_in_dim=16, upsample_initial_channel=32, upsample_rates=[4, 4],
        upsample_kernel_sizes=[8, 8], resblock_kernel_sizes=[3, 7],
        resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5]], normalize_before=False)
    model = t.FastSpeech2ConformerHifiGan(config)
    mel = torch.randn(2, 32, 16)
    return model, lambda m: _hidden(m(mel))


def _univnet():
    t = _transformers()
    config = t.UnivNetConfig(model_in_channels=16, model_hidden_channels=8,
                             num_mel_bins=16, resblock_stride_sizes=[4, 4],
                             resblock_dilation_sizes=[[1, 3], [1, 3]],
                             resblock_kernel_sizes=[3, 3], kernel_predictor_num_blocks=1,
                             kernel_predictor_hidden_channels=16)
    model = t.UnivNetModel(config)
    mel = torch.randn(2, 12, 16)  # [batch, time, mel bins]
    noise = torch.randn(2, 12, 16)  # [batch, time, noise channels]
    return model, lambda m: _hidden(m(input_features=mel, noise_sequence=noise))


def _encodec():
    t = _transformers()
    config = t.EncodecConfig(hidden_size=32, num_filters=8, upsampling_ratios=[4, 2],
                             codebook_size=64, codebook_dim=32, num_lstm_layers=2,
                             target_bandwidths=[1.5], sampling_rate=8000)
    model = t.EncodecModel(config)
    audio = torch.randn(2, 1, 800)
    return model, lambda m: _hidden(m.encoder(audio))


def _timm(name: str, **kwargs: Any):
    def build():
        model = import_timm().create_model(name, pretrained=False, num_classes=4, **kwargs)
        images = torch.randn(2, 3, 32, 32)
        return model, lambda m: _hidden(m(images))
    return build


class _LSTMLanguageModel(nn.Module):
    """A 2-layer LSTM language model as PyTorch's word-language-model example writes it."""

    def __init__(self, cell: str = "LSTM", vocab: int = 200, width: int = 64) -> None:
        super().__init__()
        self.encoder = nn.Embedding(vocab, width)
        self.rnn = getattr(nn, cell)(width, width, num_layers=2, dropout=0.1)
        self.decoder = nn.Linear(width, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        output, _ = self.rnn(self.encoder(tokens))
        return self.decoder(output)


def _recurrent(cell: str):
    def build():
        model = _LSTMLanguageModel(cell)
        tokens = torch.randint(0, 200, (35, 4))  # [time, batch]
        return model, lambda m: m(tokens)
    return build


ZOO: tuple[Entry, ...] = (
    Entry("transformers/BertModel", "transformer", _bert),
    Entry("transformers/GPT2Model", "transformer", _gpt2),
    Entry("transformers/LlamaModel", "transformer", _llama),
    Entry("transformers/T5EncoderModel", "transformer", _t5),
    Entry("transformers/Wav2Vec2Model", "transformer", _wav2vec2),
    Entry("transformers/SpeechT5HifiGan", "vocoder", _speecht5_hifigan),
    Entry("transformers/FastSpeech2ConformerHifiGan", "vocoder", _fastspeech2_hifigan),
    Entry("transformers/UnivNetModel", "vocoder", _univnet),
    Entry("transformers/EncodecModel.encoder", "vocoder", _encodec),
    Entry("timm/resnet10t", "convolutional", _timm("resnet10t")),
    Entry("timm/convnext_atto", "convolutional", _timm("convnext_atto")),
    Entry("timm/mobilenetv3_small_050", "convolutional", _timm("mobilenetv3_small_050")),
    Entry("torch/LSTM language model", "recurrent", _recurrent("LSTM")),
    Entry("torch/GRU language model", "recurrent", _recurrent("GRU")),
)


def build(entry: Entry, seed: int = 0) -> tuple[nn.Module, Callable[[nn.Module], torch.Tensor]]:
    torch.manual_seed(seed)
    return entry.build()
