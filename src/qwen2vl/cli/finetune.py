"""`qwen2vl finetune`, `merge` and `quantize`: train, fold an adapter in, write a quantized copy.

Owns: turning flags into TrainSettings and calling the fine-tuning API; writing derived checkpoints
in the Hub layout (adapter merged, or int8). Does not own: training or quantizing (finetune/, quant/).
"""

from __future__ import annotations

import argparse
from pathlib import Path

EXAMPLES = """examples:
  qwen2vl finetune Qwen/Qwen2-VL-2B-Instruct --data train.jsonl --eval-data eval.jsonl --output runs/invoices
  qwen2vl finetune ./base --data train.jsonl --output out --lora-r 8 --epochs 3 --grad-accum 4 --lr 1e-4
  qwen2vl finetune ./base --data train.jsonl --output out --full --train-merger --max-steps 500 --resume
  qwen2vl finetune ./base --data train.jsonl --output out --full --processes 2   # one process per CPU core
  torchrun --nproc-per-node 2 -m qwen2vl.cli finetune ./base --data train.jsonl --output out

each line of train.jsonl is one conversation, in Qwen or OpenAI message form; media paths are
relative to the file:
  {"messages": [{"role": "user", "content": [{"type": "image", "image": "img/001.png"},
                {"type": "text", "text": "Total?"}]}, {"role": "assistant", "content": "42.00 EUR"}]}
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser("finetune", help="fine-tune with LoRA or fully on conversations",
                                   description="Fine-tune on JSONL conversations (LoRA by default).", epilog=EXAMPLES,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="the base checkpoint directory or Hub id")
    parser.add_argument("--data", required=True, type=Path, help="training JSONL")
    parser.add_argument("--eval-data", type=Path, help="evaluation JSONL")
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--processes", type=int, default=1,
                        help="data-parallel processes on this machine's CPU cores, each with --batch-size "
                             "examples a step (faster than threads for small models); torchrun does the same")
    parser.add_argument("--full", action="store_true", help="train every decoder weight instead of LoRA adapters")
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--lora-alpha", type=float, default=32.0)
    parser.add_argument("--lora-dropout", type=float, default=0.05)
    parser.add_argument("--lora-targets", default="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj")
    parser.add_argument("--train-merger", action="store_true", help="also train the patch merger")
    parser.add_argument("--train-vision", action="store_true", help="also train the vision tower")
    parser.add_argument("--max-length", type=int, default=4096, help="longest example in tokens (visual included)")
    parser.add_argument("--batch-size", type=int, default=1, help="examples per process and micro-batch")
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--max-steps", type=int)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--warmup-ratio", type=float, default=0.03)
    parser.add_argument("--max-grad-norm", type=float, default=1.0)
    parser.add_argument("--eval-every", type=int, default=0, help="steps between evaluations (0: at the end)")
    parser.add_argument("--save-every", type=int, default=0, help="steps between resumable checkpoints")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-group-by-length", action="store_true",
                        help="plain shuffled batches instead of batches of similar length (better for mixed tasks)")
    parser.add_argument("--loss-per", choices=("token", "example"), default="token",
                        help="average the loss over answer tokens, or over examples (short answers weigh as much as long)")
    parser.add_argument("--optimizer", choices=("adamw", "muon"), default="adamw",
                        help="muon: Muon for the linear layers' matrices and AdamW for the rest, one lr (learns "
                             "small models from scratch in far fewer steps)")
    parser.add_argument("--object-loss-weight", type=float, default=0.0,
                        help="> 0: the lines' \"objects\" (boxes and tags per image) teach every visual token the "
                             "object it shows, through a training-only head (not saved with the model)")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--skip-invalid", action="store_true", help="train without invalid lines instead of stopping")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --output")
    parser.set_defaults(run=run)

    merge = subparsers.add_parser("merge", help="merge a LoRA adapter into a base model",
                                  description="Write BASE with ADAPTER merged in, as a full checkpoint in the Hub layout.",
                                  epilog="examples:\n  qwen2vl merge Qwen/Qwen2-VL-2B-Instruct runs/invoices merged-model",
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    merge.add_argument("base")
    merge.add_argument("adapter", type=Path)
    merge.add_argument("output", type=Path)
    merge.set_defaults(run=run_merge)

    quantize = subparsers.add_parser("quantize", help="write an int8 or 4-bit copy of a model",
                                     description="Write MODEL with quantized layers; it loads quantized without re-quantizing.",
                                     epilog="examples:\n  qwen2vl quantize Qwen/Qwen2-VL-2B-Instruct qwen2-vl-2b-int8\n"
                                            "  qwen2vl quantize Qwen/Qwen2-VL-2B-Instruct qwen2-vl-2b-int4 --method int4\n"
                                            "  qwen2vl generate qwen2-vl-2b-int8 --prompt Hi",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    quantize.add_argument("model")
    quantize.add_argument("output", type=Path)
    quantize.add_argument("--method", choices=["int8", "int4"], default="int8",
                          help="int8: every projection; int4: the decoder's, in groups of 32 (default: int8)")
    quantize.set_defaults(run=run_quantize)


def run(args: argparse.Namespace) -> int:
    from ..finetune import LoraSettings, TrainSettings, finetune

    settings = TrainSettings(
        output=args.output, mode="full" if args.full else "lora",
        lora=LoraSettings(r=args.lora_r, alpha=args.lora_alpha, dropout=args.lora_dropout,
                          target_modules=tuple(t.strip() for t in args.lora_targets.split(",") if t.strip())),
        train_merger=args.train_merger, train_vision=args.train_vision, max_length=args.max_length,
        batch_size=args.batch_size, grad_accum=args.grad_accum, epochs=args.epochs, max_steps=args.max_steps,
        lr=args.lr, weight_decay=args.weight_decay, warmup_ratio=args.warmup_ratio, max_grad_norm=args.max_grad_norm,
        eval_every=args.eval_every, save_every=args.save_every, seed=args.seed,
        group_by_length=not args.no_group_by_length,
        loss_per=args.loss_per, optimizer=args.optimizer,
        gradient_checkpointing=args.gradient_checkpointing, skip_invalid=args.skip_invalid,
        object_loss_weight=args.object_loss_weight,
    )
    finetune(args.model, args.data, settings, eval_file=args.eval_data, resume=args.resume, device=args.device,
              processes=args.processes)
    return 0


def run_merge(args: argparse.Namespace) -> int:
    from ..finetune.checkpoint import load_trained_adapter, save_plain_model
    from ..hub import resolve_model_dir
    from ..loading import load_model

    directory = resolve_model_dir(args.base)
    model = load_model(directory, dtype="float32")
    load_trained_adapter(model, args.adapter)
    save_plain_model(model, args.output, directory)
    print(f"wrote {args.output}")
    return 0


def run_quantize(args: argparse.Namespace) -> int:
    from ..hub import resolve_model_dir
    from ..loading import load_model
    from ..quant.transform import save_quantized_checkpoint

    directory = resolve_model_dir(args.model)
    save_quantized_checkpoint(load_model(directory, quantize=args.method), args.output, directory)
    print(f"wrote {args.output}")
    return 0
