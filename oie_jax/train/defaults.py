"""Every field of a training config, with its default and meaning. `configs/*.py` start from here."""

from ml_collections import ConfigDict

from oie_jax.models.config import LORA_TARGETS
from oie_jax.sharding import DEFAULT_RULES


def base_config() -> ConfigDict:
    c = ConfigDict()
    c.model = ConfigDict(dict(
        init="",  # oie-jax model directory to fine-tune (`oie-jax convert hf-to-jax`); "" = random init of `preset`
        preset="",  # architecture of a random init, and of --dry-run when `init` does not exist here
        tokenizer="",  # "" = the tokenizer files of `init`; else a path or "bytes" (for random tiny models)
        param_dtype="",  # master weights and optimizer state; "" keeps the checkpoint's or preset's
        dtype="",  # matmul compute dtype: "bfloat16" with float32 params is mixed precision
        remat="",  # per-block rematerialisation: none, full, dots, dots_no_batch; "" keeps the default
        attention="",  # kernel: auto (by platform), xla, cudnn (GPU), splash (TPU); "" keeps the model's (auto)
    ))
    c.vision = ConfigDict(dict(
        init="",  # oie-jax vision model directory (`oie-jax convert vision-to-jax`); "" with preset "" = none
        preset="",  # encoder architecture of a random init, and of --dry-run when `init` does not exist here:
        # clip-vit-b32, clip-vit-b16, clip-vit-l14, siglip-vit-b16, mobilenet-v2
        param_dtype="",  # "" keeps the checkpoint's or preset's
        dtype="",  # compute dtype of the encoder's matmuls
        remat="",  # ViT blocks: none, full, dots, dots_no_batch; "" keeps the default (none)
        image_size=0,  # prepare images at this size (square) instead of the model's; 0 keeps it. Convolutional
        # encoders take any size and ViTs resize their position table: a finer grid for small objects
        resize="",  # how images meet the encoder's size: squash, pad, crop; "" keeps the model's. Grounding
        # wants the whole image (pad or squash): a crop cuts off what may hold the entity.
        trainable=False,  # fine-tune the encoder; False: frozen (no gradients, no optimizer state)
    ))
    c.grounding = ConfigDict(dict(
        enabled=False,  # train a grounding head (grounded NER: GMNER data and a `vision` encoder)
        images="",  # directory of the data's images (IMGID.jpg, .png, ...)
        llama="frozen",  # frozen: the head learns on the LLaMA's hidden states; full: the LLaMA trains too
        # (with its next-token loss, so that it keeps extracting the entities it grounds); lora: its adapters
        # of train.lora (rank > 0) train, with the same loss
        cache_features=True,  # with the LLaMA and the encoder frozen, compute their features once, before the first
        # step (one pass; memory: the grid of every image), instead of at every step
        size=256,  # width of the space where entity queries meet image regions
        cells=True,  # the encoder's grid cells, each predicting a box, are candidates
        proposals="",  # JSON of candidate boxes per image id, {"IMGID": [[x1, y1, x2, y2], ...]} in image pixels
        # (a detector's, run offline), pooled from the grid with RoIAlign; "" = none. Needed when cells=False
        l1_weight=5.0,  # box regression weights (DETR's)
        giou_weight=2.0,
        lm_weight=1.0,  # the LLaMA's next-token loss, when it trains
    ))
    c.multimodal = ConfigDict(dict(
        enabled=False,  # the picture goes into the LLaMA: image tokens in the prompt (models/multimodal.py); needs a
        # `vision` encoder and records with images (their grounding's image id)
        images="",  # directory of the data's images (IMGID.jpg, .png, ...)
        image_token_id=-1,  # the placeholder token; -1 = the vocabulary's last id (its embedding is never read)
        feature_layer=-2,  # the encoder hidden state the projector reads (as Hugging Face counts them; ViTs only)
        images_per_row=1,  # records (each with its image) packed into one row, at most: every row's encoder pass reads
        # this many images (blank after its last record's), so raise it only when data.seq_len holds several records
        pool=1,  # average the grid over pool x pool cells: pool^2 times fewer image tokens (LLaVA export needs 1)
        llama="full",  # full: the LLaMA trains with the projector; frozen: the projector alone learns; lora: the
        # adapters of train.lora (rank > 0) train
    ))
    c.data = ConfigDict(dict(
        train="sample:train",  # "sample:SPLIT" (embedded corpus) or files, directories, globs, comma-separated
        dev="sample:dev",  # same forms, or "holdout:N" = N records per (subset, language) held out of train; "" = none
        source="auto",  # corpus format (see `oie-jax data inspect --help`)
        strict=False,  # fail on the first rejected record instead of counting and reporting it
        seq_len=512,
        batch_size=8,  # rows per optimizer step, global across processes
        pack=True,
        mixture_temperature=1.0,  # training only: evaluation reads every dev record once, in order
        seed=0,  # data order and the holdout split
    ))
    c.train = ConfigDict(dict(
        epochs=1,
        steps=0,  # 0 = as many as `epochs` take; otherwise this many, whatever the epochs
        steps_limit=0,  # stop (evaluate, save, export) after this many steps, the schedule still the full
        # run's: a short run that is the start of the full one, which the same command without it resumes
        lr=1e-5,
        warmup_fraction=0.03,  # of the total steps
        decay="cosine",  # cosine, linear or constant after warmup
        end_fraction=0.0,  # final learning rate as a fraction of lr
        weight_decay=0.0,  # AdamW, not applied to norm scales
        clip_norm=1.0,  # global gradient norm; 0 = no clipping
        b1=0.9,
        b2=0.95,
        micro_batches=1,  # gradient accumulation: the batch is cut into this many sequential parts
        z_loss=0.0,
        loss_scale=0.0,  # static loss scale for float16 compute (required there); 0 = none
        loss_chunk=0,  # positions whose logits are computed at once (divides data.seq_len); 0 = the whole
        # sequence. Bounds the float32 logits and their gradient to (rows, loss_chunk, vocab).
        seed=0,  # random init (and the LoRA adapters' dropout)
        lora=ConfigDict(dict(
            rank=0,  # > 0: train low-rank adapters of this rank instead of the whole LLaMA (LoRA); 0 = full fine-tuning
            alpha=16.0,  # the adapters' update is scaled by alpha / rank
            dropout=0.0,  # on each adapter's input, in training
            targets=LORA_TARGETS,  # the projections that get an adapter: q, k, v, o, gate, up, down
            base_dtype="",  # the frozen base weights in this dtype ("bfloat16" halves them); "" = model.param_dtype
        )),
    ))
    c.mesh = ConfigDict(dict(
        shape=(1, -1, 1),  # (data, fsdp, tensor) inside a slice; one -1 takes the remaining devices
        dcn_shape=(1, 1, 1),  # the same axes across slices/hosts over the data-center network
        rules=DEFAULT_RULES,  # logical axis -> mesh axes
        devices=0,  # --dry-run plans for this many devices (0 = the devices present)
        platform="",  # --dry-run plans for this platform (tpu, gpu, cpu; "" = this host's): attention "auto"
        device_memory_gb=0.0,  # --dry-run compares its estimate with this (0 = unknown)
    ))
    c.checkpoint = ConfigDict(dict(
        every=100,  # steps; a last one is written at the end and on SIGTERM/SIGINT
        keep=2,  # latest checkpoints kept for resume
        async_save=True,  # write in the background while training goes on
        best_metric="dev_loss",  # best params kept under best/ by this metric: dev_loss, or an F1 such as
        # macro/all/f1 (see docs/metrics.md; needs eval.f1_every); "" = off
        best_mode="min",  # min or max
        compilation_cache=True,  # JAX's persistent compilation cache in WORKDIR/compilation_cache: a
        # restarted job loads its compiled steps instead of compiling them again
    ))
    c.eval = ConfigDict(dict(
        every=100,  # steps between dev-loss evaluations (and at the end); 0 = only at the end
        f1_every=0,  # steps between generation-based F1 evaluations on dev (and at the end); 0 = never
        f1_examples=0,  # dev records generated for F1 (the first N; 0 = all)
        max_new_tokens=0,  # generation budget of dev F1, saved with the model for `eval`/`extract`; 0 = from the
        # data: the fewest tokens (a multiple of 8) that hold 99.5% of the train+dev gold outputs
        batch_size=16,  # generation batch
        constrained=True,  # dev F1 decodes as `oie-jax eval` does by default: constrained to the format and
        # the training data's label sets (infer/constrain.py); False: free decoding (`eval --no-constrained`)
    ))
    c.log = ConfigDict(dict(
        every=10,  # steps between metrics lines (means over those steps: JSONL, TensorBoard, progress bar)
    ))
    c.export = ConfigDict(dict(
        model=True,  # write WORKDIR/model, an oie-jax model directory of best/ (else the final parameters)
    ))
    return c


# The MMM release files, put under data/mmm/. The release has no dev split: model selection uses records
# held out of the training files, and the test files are for the final evaluation only
# (`oie-jax eval --model WORKDIR/model --data "data/mmm/test_*.json"`).
MMM_TRAIN, MMM_TEST = "data/mmm/Train_*.json", "data/mmm/test_*.json"
MMM_DEV = "holdout:100"


def paper_recipe(c: ConfigDict, init: str, preset: str) -> ConfigDict:
    """OIELLM's fine-tuning as the paper describes it: full fine-tuning on all of MMM, 3 epochs, learning
    rate 1e-5, bfloat16. Matmuls run in bfloat16; weights and Adam moments stay float32, because an
    update of 1e-5 relative to a weight is below bfloat16's resolution (2^-8) and would round away."""
    c.model.init, c.model.preset = init, preset
    c.model.param_dtype, c.model.dtype = "float32", "bfloat16"
    c.data.train, c.data.dev, c.data.source = MMM_TRAIN, MMM_DEV, "mmm"
    c.data.seq_len, c.data.batch_size = 2048, 64
    c.train.epochs, c.train.lr, c.train.weight_decay = 3, 1e-5, 0.0
    c.train.loss_chunk = 512  # 128k-token vocabularies: never the float32 logits of a whole row at once
    c.checkpoint.every = c.eval.every = 500
    return c
