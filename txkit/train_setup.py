"""A training run's components built from its recipe: the run directory, the accelerator, the tokenizers
(built first when missing), the data and its batches, the model with its optimizer and schedule.

txkit.training's Trainer receives what is built here, as torchtune's recipes set up their components
outside the loop, so that a Trainer can be made from hand-made parts as well (tests/test_training.py).
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

from txkit import runs
from txkit.errors import TxkitError
from txkit.mixing import check_tags, is_mixture, make_mixed_sampler, tag_dataset, train_corpora, train_tags
from txkit.prepare import build_recipe_tokenizer, load_corpus
from txkit.recipe import Recipe, check_data_files, resolve_tokenizer_path
from txkit.training import Trainer, TrainComponents, TrainHooks


def build_trainer(recipe: Recipe, output_dir: str | os.PathLike, resume=None, hooks: TrainHooks | None = None):
    """The Trainer of `recipe` in `output_dir` (see txkit.training.train for `resume`)."""
    setup = TrainingSetup(recipe, output_dir, resume)
    components = setup.build()
    # TensorBoard's hparams take numbers, strings and booleans only
    hparams = {k.replace(".", "/"): v if isinstance(v, (int, float, str, bool)) else str(v)
               for k, v in recipe.flat().items()}  # fmt: skip
    setup.accelerator.init_trackers("tensorboard", config=hparams)
    return Trainer(recipe, setup.run_dir, setup.accelerator, components, setup.resume_from, hooks)


class TrainingSetup:
    """Prepares the run directory and the accelerator for a recipe (checks first: data files, existing
    checkpoints), then builds its components (`build`)."""

    def __init__(self, recipe: Recipe, output_dir: str | os.PathLike, resume=None):
        import torch

        from txkit import checkpointing as ckpt

        self.recipe = recipe
        t = recipe.train
        check_data_files(recipe)
        ckpt.refuse_sharded_launch()
        self.run_dir = ckpt.prepare_run_dir(output_dir)
        if t.mixed_precision == "fp16" and not torch.cuda.is_available():
            raise TxkitError("train.mixed_precision=fp16 needs a GPU; use bf16 or no on the CPU")
        self.accelerator = self._make_accelerator()
        acc = self.accelerator
        self.resume_from = ckpt.find_resume_checkpoint(self.run_dir, resume, warn=self._info)
        if self.resume_from is None and runs.list_checkpoints(self.run_dir):
            latest = runs.latest_checkpoint(self.run_dir)
            raise TxkitError(
                f"{self.run_dir} already holds checkpoints (latest: {latest.name}); pass --resume to continue "
                "that run or choose another --output-dir"
            )
        if acc.is_main_process:
            ckpt.clean_partial(self.run_dir)
            ckpt.write_recipe(self.run_dir, recipe)

    def build(self) -> TrainComponents:
        """Tokenizers, data, then the model (in this order: the model's initialisation seeds torch)."""
        self._setup_tokenizer()
        self._setup_data()
        self._setup_model()
        return TrainComponents(
            model=self.model, optimizer=self.optimizer, scheduler=self.scheduler, src_tok=self.src_tok,
            tgt_tok=self.tgt_tok, pairs=self.pairs, sampler=self.sampler, valid_pairs=self.valid_pairs,
            valid_batches=self.valid_batches, valid_src=self.valid_src, valid_refs=self.valid_refs,
            tokenizer_dir=self.tokenizer_dir,
        )  # fmt: skip

    def _info(self, message: str) -> None:
        if self.accelerator.is_main_process:
            print(message, file=sys.stderr)

    # -- the steps ---------------------------------------------------------------------------------

    def _make_accelerator(self):
        import torch
        from accelerate import Accelerator
        from accelerate.utils import ProjectConfiguration

        # Without CUDA, a plain Accelerator() under torchrun forms no process group (every process would
        # train alone on its shard); cpu=True makes it a gloo group, so data parallelism is real.
        return Accelerator(
            cpu=not torch.cuda.is_available(),
            mixed_precision=self.recipe.train.mixed_precision,
            log_with="tensorboard",
            project_config=ProjectConfiguration(project_dir=str(self.run_dir), logging_dir=str(self.run_dir)),
        )

    def _setup_tokenizer(self) -> None:
        """Load the recipe's tokenizer; the main process builds it first when it does not exist."""
        from txkit.tokenization import load_tokenizers

        path = resolve_tokenizer_path(self.recipe, self.run_dir)
        if self.accelerator.is_main_process and not (path / "tokenizer.json").is_file():
            if path.exists() and any(path.iterdir()):
                raise TxkitError(f"tokenizer.path {path}: exists but is not a tokenizer folder (no tokenizer.json)")
            t = self.recipe.tokenizer
            self._info(f"building the tokenizer in {path} ({t.model}, {t.vocab_size} tokens)")
            build_recipe_tokenizer(self.recipe, path)
        self.accelerator.wait_for_everyone()
        self.tokenizer_dir = path
        self.src_tok, self.tgt_tok = load_tokenizers(path)
        check_tags(self.src_tok, train_tags(self.recipe), path)

    def _setup_data(self) -> None:
        from txkit.batching import TokenBatchSampler, TokenizedPairs
        from txkit.data import tokenize_dataset

        r, acc = self.recipe, self.accelerator
        d = r.data
        corpora = train_corpora(r)
        with acc.main_process_first():  # one process fills the datasets cache, the others read it
            train_ds, raw_sizes = self._load_train(corpora)
            train_ids, report = tokenize_dataset(
                train_ds, self.src_tok, self.tgt_tok, num_proc=d.num_proc, max_len=d.max_len,
                max_ratio=d.max_ratio or math.inf, dedup=d.dedup,
                name=f"data.train {', '.join(c.path for c in corpora)}",
            )  # fmt: skip
            self.valid_src, self.valid_refs, valid_ids = [], [], None
            if d.valid:
                valid_ds = load_corpus(r, d.valid, "validation")
                if d.valid_max_sentences:
                    valid_ds = valid_ds.select(range(min(d.valid_max_sentences, len(valid_ds))))
                valid_ds = tag_dataset(valid_ds, d.eval_tag)  # the direction validated, for a multilingual model
                self.valid_src, self.valid_refs = valid_ds["src"], valid_ds["tgt"]
                positions = r.model.max_position_embeddings or 1024
                valid_ids, _ = tokenize_dataset(
                    valid_ds, self.src_tok, self.tgt_tok, max_len=positions, max_ratio=math.inf,
                    name=f"data.valid {d.valid}",
                )
        self._info(f"data.train: {report}")
        self.pairs = TokenizedPairs(train_ids)
        multiple = r.train.pad_to_multiple_of
        shards = dict(seed=r.train.seed, num_shards=acc.num_processes, shard_index=acc.process_index, shuffle=True,
                      pad_to_multiple_of=multiple)  # fmt: skip
        mixture = self._mixture(corpora, raw_sizes) if is_mixture(corpora) else None
        if r.tokenizer.dropout:  # BPE-dropout: each epoch's batches come from that epoch's segmentation
            from txkit.subword_sampling import SampledBatchSampler, SampledPairs

            rows = self.pairs.rows if self.pairs.rows is not None else range(len(self.pairs))
            src_all, tgt_all = train_ds["src"], train_ds["tgt"]
            self.pairs = SampledPairs(
                self.pairs, [src_all[i] for i in rows], [tgt_all[i] for i in rows], self.src_tok, self.tgt_tok,
                r.tokenizer.dropout, seed=r.train.seed, max_len=d.max_len, max_tokens=r.train.max_tokens,
                pad_to_multiple_of=multiple,
            )  # fmt: skip
            if mixture is not None:
                self.sampler = make_mixed_sampler(mixture, self.pairs.base.src_lengths, self.pairs.base.tgt_lengths,
                                                  r.train.max_tokens, pairs=self.pairs, **shards)  # fmt: skip
            else:
                self.sampler = SampledBatchSampler(self.pairs, r.train.max_tokens, **shards)
        elif mixture is not None:
            self.sampler = make_mixed_sampler(mixture, self.pairs.src_lengths, self.pairs.tgt_lengths,
                                              r.train.max_tokens, **shards)  # fmt: skip
        else:
            lengths = (self.pairs.src_lengths, self.pairs.tgt_lengths)
            self.sampler = TokenBatchSampler(*lengths, r.train.max_tokens, **shards)
        self.valid_pairs = self.valid_batches = None
        if valid_ids is not None:
            self.valid_pairs = TokenizedPairs(valid_ids)
            longest = int(max(self.valid_pairs.src_lengths.max(), self.valid_pairs.tgt_lengths.max()))
            valid_sampler = TokenBatchSampler(
                self.valid_pairs.src_lengths, self.valid_pairs.tgt_lengths, max(r.train.max_tokens, longest + multiple),
                num_shards=acc.num_processes, shard_index=acc.process_index, shuffle=False, pad_to_multiple_of=multiple,
            )  # fmt: skip
            self.valid_batches = list(valid_sampler)

    def _load_train(self, corpora):
        """The training text (each corpus's first data.max_sentences pairs, its tag before every source sentence,
        the corpora one after another) and each corpus's number of pairs. One untagged corpus: read as always."""
        r, d = self.recipe, self.recipe.data

        def first(ds):
            return ds.select(range(min(d.max_sentences, len(ds)))) if d.max_sentences else ds

        if not is_mixture(corpora) and not corpora[0].tag:
            ds = first(load_corpus(r, corpora[0].path, "train", corpora[0].langs(d)))
            return ds, [len(ds)]
        from datasets import concatenate_datasets

        parts = [tag_dataset(first(load_corpus(r, c.path, "train", c.langs(d))), c.tag) for c in corpora]
        return concatenate_datasets(parts), [len(p) for p in parts]

    def _mixture(self, corpora, raw_sizes):
        """The Mixture over the kept pairs: a filtered pair's corpus is found from its row in the concatenation."""
        import numpy as np

        from txkit.mixing import Mixture

        rows = self.pairs.rows if self.pairs.rows is not None else np.arange(len(self.pairs))
        bounds = np.cumsum(raw_sizes)
        kept = np.bincount(np.searchsorted(bounds, rows, side="right"), minlength=len(corpora))
        for i, (corpus, n) in enumerate(zip(corpora, kept)):
            if n == 0:
                raise TxkitError(f"data.train[{i}] {corpus.path}: no pairs left after filtering")
        mixture = Mixture(kept.tolist(), [c.weight for c in corpora], seed=self.recipe.train.seed)
        for i, (corpus, n, drawn) in enumerate(zip(corpora, kept, mixture.counts)):
            self._info(f"data.train[{i}] {corpus.path}{' ' + corpus.tag if corpus.tag else ''}: {n} pairs, "
                       f"weight {corpus.weight:g}: {drawn} pairs per epoch")  # fmt: skip
        return mixture

    def _setup_model(self) -> None:
        import torch
        from transformers import GenerationConfig

        from txkit.modeling import TxkitConfig, TxkitForConditionalGeneration
        from txkit.schedule import build_optimizer, build_scheduler
        from txkit.tokenization import config_kwargs_from_tokenizer

        r, acc = self.recipe, self.accelerator
        config = TxkitConfig.from_preset(
            r.model.preset, **config_kwargs_from_tokenizer(self.src_tok, self.tgt_tok), **r.model.config_overrides()
        )
        if r.data.max_len > config.max_position_embeddings:
            raise TxkitError(
                f"data.max_len ({r.data.max_len}) exceeds model.max_position_embeddings "
                f"({config.max_position_embeddings})"
            )
        if self.resume_from is not None:
            model = TxkitForConditionalGeneration.from_pretrained(self.resume_from, dtype=torch.float32)
            _check_same_architecture(model.config, config, self.resume_from)
        else:
            torch.manual_seed(r.train.seed)  # the same initial weights on every process
            model = TxkitForConditionalGeneration(config)
        e = r.eval
        # For `model.generate` users: the paper's beam and alpha (in transformers' score/|Y|^alpha form).
        # (a length penalty without beams is an invalid GenerationConfig, refused when the model is saved)
        beams = {"num_beams": e.beam_size, **({"length_penalty": e.length_penalty} if e.beam_size > 1 else {})}
        model.generation_config = GenerationConfig(
            **beams,
            max_length=min(config.max_position_embeddings, r.data.max_len + e.max_len_b),
            bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id,
            decoder_start_token_id=config.decoder_start_token_id,
        )  # fmt: skip
        # fused on CPUs (measured there); GPUs keep torch's default (foreach), untested fused with fp16's scaler
        optimizer = build_optimizer(model, r.train, fused=acc.device.type == "cpu")
        self.model, self.optimizer = acc.prepare(model, optimizer)
        # Not prepared (accelerate's wrapper steps once per process); stepped only after an applied update.
        self.scheduler = build_scheduler(self.optimizer.optimizer, r.train, config.d_model)


_ARCHITECTURE_KEYS = ("d_model", "encoder_layers", "decoder_layers", "attention_heads", "ffn_dim", "vocab_size",
                      "tgt_vocab_size", "normalize_before", "activation_function")  # fmt: skip


def _check_same_architecture(saved, wanted, checkpoint: Path) -> None:
    for key in _ARCHITECTURE_KEYS:
        if getattr(saved, key) != getattr(wanted, key):
            raise TxkitError(
                f"{checkpoint}: has {key}={getattr(saved, key)} but the recipe gives {getattr(wanted, key)}; "
                "resume with the recipe the run was started with"
            )
