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
    parser.add_argument("--method", default="stablesr", choices=["stablesr", "ccsr"],
                        help="stablesr (default) or ccsr: one CCSR v1 real-world_ccsr.ckpt, or the CCSR v2 "
                             "controlnet/ and vae/ folders plus an SD 2.1-base diffusers folder")
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


def _read_json_configs(args: argparse.Namespace) -> dict:
    """{unet_config, vae_config, encoder_config}: the parsed --*-config files (None when not given)."""
    import json
    from pathlib import Path

    from stablesr.errors import StableSRError

    configs = {}
    for name, path in (("unet_config", args.unet_config), ("vae_config", args.vae_config),
                       ("encoder_config", args.encoder_config)):
        flag = "--" + name.replace("_", "-")
        try:
            configs[name] = json.loads(Path(path).read_text()) if path else None
        except OSError as error:
            raise StableSRError(f"{flag} {path}: {error.strerror or error}") from error
        except ValueError as error:
            raise StableSRError(f"{flag} {path} is not JSON ({error})") from error
        if path and not isinstance(configs[name], dict):
            raise StableSRError(f"{flag} {path} must hold a JSON object of settings")
    return configs


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from stablesr.errors import StableSRError
    from stablesr.weights.folders import write_model_folder
    from stablesr.weights.loading import build_pipeline

    output = Path(args.output)
    if output.exists() and not output.is_dir():
        return fail(f"-o {output} is a file, not a folder")
    if (output / "model_index.json").exists() and not args.overwrite:
        return fail(f"{output} already holds a model; pass --overwrite to replace it")
    if output.is_dir() and any(output.iterdir()) and not (output / "model_index.json").exists():
        return fail(f"-o {output} holds files but no model; choose an empty or new folder")
    try:
        configs = _read_json_configs(args)
        if args.method == "ccsr":
            return _convert_ccsr(args, configs, output)
        pipe = build_pipeline(args.checkpoints, base=args.base, trust_pickle=args.trust_pickle,
                              keep_text_encoder=args.keep_text_encoder, text_encoder_folder=args.text_encoder,
                              **configs)
    except StableSRError as error:
        return fail(str(error))
    except (TypeError, ValueError) as error:  # a config whose settings the model classes refuse
        return fail(f"the model configs do not fit the checkpoints: {error}")
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    pipe.to(dtype=dtype)
    try:
        write_model_folder(output, lambda folder: pipe.save_pretrained(folder, safe_serialization=True),
                           overwrite=args.overwrite)
    except OSError as error:  # a full disk: the previous folder (if any) is left as it was
        return fail(f"cannot write {output}: {error.strerror or error} (nothing was changed there)", code=1)
    except StableSRError as error:
        return fail(str(error))
    cached = ", ".join(repr(t) for t in pipe.prompt_embeds.config.prompts.values())
    print(f"wrote {output} (prediction type {pipe.prediction_type}, CFW {'yes' if pipe.config.cfw_trained else 'no'}, "
          f"cached prompts: {cached})")
    return 0


def _convert_ccsr(args: argparse.Namespace, configs: dict, output) -> int:
    """`--method ccsr`: one real-world_ccsr.ckpt (v1) or the three v2 folders -> a CCSRPipeline folder."""
    from pathlib import Path

    import torch

    from stablesr.errors import StableSRError
    from stablesr.weights.ccsr import build_ccsr_pipeline, build_ccsr_v2_pipeline
    from stablesr.weights.folders import write_model_folder

    if configs.get("encoder_config") is not None:
        return fail("--method ccsr takes no --encoder-config")
    if all(Path(path).is_dir() for path in args.checkpoints):
        pipe = build_ccsr_v2_pipeline(args.checkpoints)
        pipe.upscale_defaults = {"num_inference_steps": 1, "t_max": 0.6666, "t_min": 0.0}  # the README one-step
    elif len(args.checkpoints) == 1:
        pipe = build_ccsr_pipeline(args.checkpoints[0], trust_pickle=args.trust_pickle,
                                   unet_config=configs["unet_config"], vae_config=configs["vae_config"])
    else:
        return fail("--method ccsr takes one real-world_ccsr.ckpt (v1) or the v2 controlnet/, vae/ and SD folders")
    pipe.to(dtype={"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype])
    try:
        write_model_folder(output, lambda folder: pipe.save_pretrained(folder, safe_serialization=True),
                           overwrite=args.overwrite)
    except OSError as error:
        return fail(f"cannot write {output}: {error.strerror or error} (nothing was changed there)", code=1)
    except StableSRError as error:
        return fail(str(error))
    print(f"wrote {output} (CCSR {pipe.version})")
    return 0
