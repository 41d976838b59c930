"""`stablesr convert CKPT... -o FOLDER`: official checkpoints -> a pipeline folder (configs + safetensors).

Inputs are classified by their keys, so order does not matter: a full StableSR checkpoint, or the
WebUI SR module plus an SD base (diffusers folder or LDM single file), and optionally the CFW
checkpoint. The empty-prompt embedding is computed once and cached in the folder.
"""

from __future__ import annotations

import argparse

from stablesr.cli.common import fail


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoints", nargs="+", metavar="CKPT",
                        help="stablesr_000117.ckpt / stablesr_768v_000139.ckpt / stablesr_turbo.ckpt, "
                             "vqgan_cfw_00011.ckpt, a WebUI SR module, an SD 2.x diffusers folder or single file")
    parser.add_argument("-o", "--output", required=True, help="output folder")
    parser.add_argument("--base", choices=["sd21-base", "sd21-768v", "sd-turbo"],
                        help="SD base (default: guessed from the SR checkpoint's file name)")
    parser.add_argument("--text-encoder", metavar="SD_FOLDER",
                        help="an SD 2.x diffusers folder with text_encoder/ and tokenizer/ (needs transformers): "
                             "caches the official negative/positive prompts too")
    parser.add_argument("--keep-text-encoder", action="store_true",
                        help="also save the text encoder + tokenizer so any prompt works (adds ~1.4 GB)")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="load .ckpt files with full pickle instead of the restricted unpickler")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"], help="stored precision")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder's files")
    parser.add_argument("--unet-config", metavar="JSON", help="diffusers UNet config overriding the shipped SD 2.x one")
    parser.add_argument("--vae-config", metavar="JSON", help="diffusers VAE config overriding the shipped one")
    parser.add_argument("--encoder-config", metavar="JSON", help="time-aware encoder kwargs (custom models)")


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    import torch

    from stablesr.errors import StableSRError
    from stablesr.weights.loading import build_pipeline

    output = Path(args.output)
    if (output / "model_index.json").exists() and not args.overwrite:
        return fail(f"{output} already holds a model; pass --overwrite to replace it")
    try:
        configs = {name: json.loads(Path(path).read_text()) if path else None for name, path in
                   (("unet_config", args.unet_config), ("vae_config", args.vae_config),
                    ("encoder_config", args.encoder_config))}
        pipe = build_pipeline(args.checkpoints, base=args.base, trust_pickle=args.trust_pickle,
                              keep_text_encoder=args.keep_text_encoder, text_encoder_folder=args.text_encoder,
                              **configs)
    except StableSRError as error:
        return fail(str(error))
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    pipe.to(dtype=dtype)
    pipe.save_pretrained(output, safe_serialization=True)
    cached = ", ".join(repr(t) for t in pipe.prompt_embeds.config.prompts.values())
    print(f"wrote {output} (prediction type {pipe.prediction_type}, CFW {'yes' if pipe.config.cfw_trained else 'no'}, "
          f"cached prompts: {cached})")
    return 0
