"""`oie-jax convert hf-to-jax | jax-to-hf | vision-to-jax | vision-to-hf | llava-to-jax | jax-to-llava`:
LLaMA, vision encoder and multimodal (LLaVA) weights between Hugging Face (or torchvision) and oie-jax."""

from oie_jax.models.policies import DTYPES


def cmd_hf_to_jax(args):
    from oie_jax.convert import hf_to_jax

    cfg = hf_to_jax.convert(args.src, args.out, gguf_file=args.gguf_file, dtype=args.dtype, overwrite=args.overwrite)
    print(f"wrote {args.out}: LLaMA with {cfg.num_params() / 1e6:.1f}M parameters in {cfg.param_dtype}")


def cmd_jax_to_hf(args):
    from oie_jax.convert import jax_to_hf

    out = jax_to_hf.convert(args.src, args.out, dtype=args.dtype, max_shard_bytes=int(args.max_shard_gb * 1024**3),
                            overwrite=args.overwrite)
    print(f"wrote {out}: load it with transformers.LlamaForCausalLM.from_pretrained({str(out)!r})")


def cmd_vision_to_jax(args):
    from oie_jax.convert import vision

    cfg = vision.convert(args.src, args.out, dtype=args.dtype, overwrite=args.overwrite)
    name = f"{cfg.layout} ViT" if hasattr(cfg, "layout") else "MobileNetV2"
    print(f"wrote {args.out}: {name} encoder in {cfg.param_dtype}")


def cmd_vision_to_hf(args):
    from oie_jax.convert import vision

    out = vision.to_hf(args.src, args.out, overwrite=args.overwrite)
    print(f"wrote {out}: load it with transformers.AutoModel.from_pretrained({str(out)!r})")


def cmd_llava_to_jax(args):
    from oie_jax.convert import llava

    llama_cfg, vision_cfg, _ = llava.convert(args.src, args.out, dtype=args.dtype, overwrite=args.overwrite)
    print(f"wrote {args.out}: {vision_cfg.layout} ViT + projector + LLaMA with {llama_cfg.num_params() / 1e6:.1f}M "
          f"parameters in {llama_cfg.param_dtype}")


def cmd_jax_to_llava(args):
    from oie_jax.convert import llava

    out = llava.to_hf(args.src, args.out, dtype=args.dtype, overwrite=args.overwrite)
    print(f"wrote {out}: load it with transformers.LlavaForConditionalGeneration.from_pretrained({str(out)!r})")


def add_hf_export_arguments(parser) -> None:
    parser.add_argument("--dtype", choices=DTYPES, help="tensor dtype (default: the model's)")
    parser.add_argument("--max-shard-gb", type=float, default=5.0, help="start a new shard above this size")


def add_parsers(commands) -> None:
    convert = commands.add_parser("convert", help="move LLaMA, vision encoder and LLaVA weights between Hugging Face "
                                                  "(or torchvision) and oie-jax")
    directions = convert.add_subparsers(dest="direction", required=True, metavar="DIRECTION")
    to_jax = directions.add_parser(
        "hf-to-jax", help="Hugging Face safetensors (or GGUF) directory -> oie-jax model directory",
        description="Reads config.json and single or sharded safetensors tensor by tensor (or a GGUF file "
                    "through transformers, dequantized) and writes an Orbax checkpoint, our config and the "
                    "tokenizer files.")
    to_jax.add_argument("src", help="Hugging Face model directory")
    to_jax.add_argument("out", help="output oie-jax model directory")
    to_jax.add_argument("--gguf-file", help="read this GGUF file (name inside SRC) instead of safetensors")
    to_jax.add_argument("--dtype", choices=DTYPES, help="parameter and compute dtype (default: the source's)")
    to_jax.add_argument("--overwrite", action="store_true", help="replace the contents of a non-empty OUT")
    to_jax.set_defaults(run=cmd_hf_to_jax)

    to_hf = directions.add_parser(
        "jax-to-hf", help="oie-jax model directory -> Hugging Face directory (safetensors, config, tokenizer)")
    to_hf.add_argument("src", help="oie-jax model directory")
    to_hf.add_argument("out", help="output Hugging Face model directory")
    add_hf_export_arguments(to_hf)
    to_hf.add_argument("--overwrite", action="store_true", help="replace the contents of a non-empty OUT")
    to_hf.set_defaults(run=cmd_jax_to_hf)

    vision_in = directions.add_parser(
        "vision-to-jax", help="CLIP/SigLIP safetensors directory or torchvision MobileNetV2 file -> oie-jax vision "
                              "model directory",
        description="SRC is a Hugging Face CLIPVisionModel, CLIPModel, SiglipVisionModel or SiglipModel directory "
                    "(the vision tower is taken; preprocessor_config.json gives size, mean and std), or "
                    "torchvision's MobileNetV2 state dict (.pth, read with the weights-only unpickler and cached as "
                    "safetensors; or that .safetensors). `python -c 'from oie_jax.assets import "
                    "mobilenet_v2_weights; print(mobilenet_v2_weights())'` prints the path of the ImageNet weights "
                    "that ship offline.")
    vision_in.add_argument("src", help="Hugging Face model directory, or MobileNetV2 .pth/.safetensors file")
    vision_in.add_argument("out", help="output oie-jax vision model directory")
    vision_in.add_argument("--dtype", choices=DTYPES, help="parameter and compute dtype (default: float32)")
    vision_in.add_argument("--overwrite", action="store_true", help="replace the contents of a non-empty OUT")
    vision_in.set_defaults(run=cmd_vision_to_jax)

    vision_out = directions.add_parser(
        "vision-to-hf", help="oie-jax ViT vision model directory -> Hugging Face CLIPVisionModel/SiglipVisionModel")
    vision_out.add_argument("src", help="oie-jax vision model directory (CLIP or SigLIP layout)")
    vision_out.add_argument("out", help="output Hugging Face model directory")
    vision_out.add_argument("--overwrite", action="store_true", help="replace the contents of a non-empty OUT")
    vision_out.set_defaults(run=cmd_vision_to_hf)

    llava_in = directions.add_parser(
        "llava-to-jax", help="Hugging Face LLaVA directory -> oie-jax multimodal model directory",
        description="SRC is a LlavaForConditionalGeneration directory with a CLIP or SigLIP vision tower and a LLaMA "
                    "language model (LLaVA's GELU projector with biases, one vision feature layer; CLIP's class token "
                    "dropped, SigLIP's whole grid). OUT holds llama/ (with the tokenizer files), vision/ (with the "
                    "image preprocessing of preprocessor_config.json), projector/ and oie_multimodal.json.")
    llava_in.add_argument("src", help="Hugging Face LLaVA model directory")
    llava_in.add_argument("out", help="output oie-jax multimodal model directory")
    llava_in.add_argument("--dtype", choices=DTYPES, help="parameter and compute dtype (default: the source's)")
    llava_in.add_argument("--overwrite", action="store_true", help="replace the contents of a non-empty OUT")
    llava_in.set_defaults(run=cmd_llava_to_jax)

    llava_out = directions.add_parser(
        "jax-to-llava", help="oie-jax multimodal model directory -> Hugging Face LlavaForConditionalGeneration")
    llava_out.add_argument("src", help="oie-jax multimodal model directory (ViT tower, no grid pooling)")
    llava_out.add_argument("out", help="output Hugging Face model directory")
    llava_out.add_argument("--dtype", choices=DTYPES, help="tensor dtype (default: the model's)")
    llava_out.add_argument("--overwrite", action="store_true", help="replace the contents of a non-empty OUT")
    llava_out.set_defaults(run=cmd_jax_to_llava)
