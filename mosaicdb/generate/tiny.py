"""A tiny random-weight SDXL pipeline built offline from configs (no hub, no download).

It has the real SDXL structure (UNet with text-time embedding, an 8x VAE, two CLIP text
encoders, byte-level tokenizers, an Euler scheduler), 1.2M parameters, and makes 64 px images
in well under a second on a CPU. Its pictures are noise-like (nothing was trained), but every
code path of `mosaic generate` runs on it: tests, the benchmark, and trying the commands
without weights. Saved with `save_pretrained`, so `--model DIR` loads it like any checkpoint.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

from ..errors import UsageError, choice
from . import deps

TINY_SIZE = 64
MARKER = "mosaicdb-tiny.json"


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's byte -> printable character table (byte-level BPE)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs = bs[:]
    extra = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    return dict(zip(bs, map(chr, cs)))


def _write_tokenizer_files(folder: Path) -> tuple[Path, Path]:
    """vocab.json: the 256 byte symbols, the same with </w>, and the two special tokens (514);
    merges.txt without merges, so every byte is a token."""
    syms = list(_bytes_to_unicode().values())
    vocab = {s: i for i, s in enumerate(syms)}
    vocab.update({s + "</w>": 256 + i for i, s in enumerate(syms)})
    vocab["<|startoftext|>"] = 512
    vocab["<|endoftext|>"] = 513
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return folder / "vocab.json", folder / "merges.txt"


VAES = {"random": "random weights (its colour barely depends on the latent)",
        "colour": "an exact colour codec set by hand (colourvae.py), so guidance and AdaIN can act"}


def build_tiny_pipeline(seed: int = 0, vae: str = "random"):
    """The tiny StableDiffusionXLPipeline, in memory (weights seeded by `seed`); `vae` picks
    the VAE (see VAES)."""
    choice("--vae", vae, VAES)
    torch = deps.torch()
    D = deps.diffusers()
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer
    torch.manual_seed(seed)
    unet = D.UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=TINY_SIZE // 8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 1),
        projection_class_embeddings_input_dim=6 * 8 + 32,  # 6 time ids x 8 + text_encoder_2's projection_dim
        cross_attention_dim=64, norm_num_groups=8)          # the two encoders' hidden sizes summed
    if vae == "colour":
        from .colourvae import build_colour_vae
        vae_model = build_colour_vae(TINY_SIZE)
    else:
        vae_model = D.AutoencoderKL(block_out_channels=(8, 16, 16, 16), latent_channels=4, norm_num_groups=8,
                                    down_block_types=["DownEncoderBlock2D"] * 4,
                                    up_block_types=["UpDecoderBlock2D"] * 4, sample_size=TINY_SIZE)
    cfg = CLIPTextConfig(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                         vocab_size=514, projection_dim=32, bos_token_id=512, eos_token_id=513, pad_token_id=513)
    te1, te2 = CLIPTextModel(cfg), CLIPTextModelWithProjection(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        vocab, merges = _write_tokenizer_files(Path(tmp))
        tok = CLIPTokenizer(str(vocab), str(merges), model_max_length=77)
    sched = D.EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                     steps_offset=1, timestep_spacing="leading")
    return D.StableDiffusionXLPipeline(vae=vae_model, text_encoder=te1, text_encoder_2=te2, tokenizer=tok,
                                       tokenizer_2=tok, unet=unet, scheduler=sched)


def save_tiny_pipeline(folder, seed: int = 0, overwrite: bool = False, vae: str = "random") -> Path:
    """Build the tiny pipeline and save it to `folder` (written to a temporary name, then renamed)."""
    choice("--vae", vae, VAES)
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        if not (overwrite and (folder / MARKER).is_file()):
            raise UsageError(f"{folder} exists and is not empty: choose a new folder for the tiny model")
    pipe = build_tiny_pipeline(seed, vae)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    try:
        pipe.save_pretrained(tmp)
        params = sum(p.numel() for m in (pipe.unet, pipe.vae, pipe.text_encoder, pipe.text_encoder_2)
                     for p in m.parameters())
        (tmp / MARKER).write_text(json.dumps({"what": "tiny random-weight SDXL pipeline for tests and demos",
                                              "seed": seed, "parameters": params, "native_size": TINY_SIZE,
                                              "vae": vae}, indent=2))
        if folder.exists():
            import shutil
            shutil.rmtree(folder)
        tmp.rename(folder)
    except BaseException:
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder
