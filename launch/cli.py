"""`codecloop`: codec-in-the-loop training, sweeps and the paper protocol from the shell.

Every config key is a flag (``--batch_size 32`` or ``--batch_size=32``; dashes work too) and
a YAML key (``--config run.yaml``); flags win over the file, the file over the defaults.
Task keys belong to the tasks that take them (``codecloop train --task T --help`` lists T's);
one set for another task is an error. The resolved config is saved as ``config.yaml`` in the
run directory.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from codecloop.bench.gpu_rates import GPU_IMAGES_PER_SEC, GPU_SOURCE
from codecloop.dali_pipes.crf import DEFAULT_LADDER
from codecloop.dali_pipes.video_codecs import AV1_LADDER, parse_crfs
from codecloop.dali_pipes.validate import BadImageError
from codecloop.trainers.checkpoint import DiskFullError
from codecloop.trainers.config import Config, check_task_keys, coerce, config_keys, load_yaml, range_text, task_sections

CONFIG_COMMANDS = {
    "train": "train or fine-tune a task model with a codec (JPEG, H.264, ...) in the loop",
    "sweep": "evaluate a checkpoint clean and at each codec level: sweep.csv, sweep.png, report.md",
    "experiment": "the paper protocol: baseline -> sweep -> retrain on compressed data -> sweep -> recovery",
    "check-data": "read a dataset as a run would (layout, split files, every file scanned) and list every "
                  "missing and skipped file, without training",
}
EXAMPLES = """examples:
  codecloop demo
  codecloop train --data ~/imagenette --model resnet50 --codec jpeg --level 5-95 --clean_prob 0.1 --epochs 5
  codecloop sweep --data ~/imagenette --model resnet50 --checkpoint runs/train-X --levels 5,10,15,30,50
  codecloop experiment --config launch/configs/classification.yaml --data ~/imagenette --retrain_level 5,10,15
  codecloop experiment --grid launch/grids/segmentation_families.yaml --data ~/voc --out runs/grid-seg
  accelerate launch --config_file launch/accelerate/single_node_multi_gpu.yaml -m codecloop train ...
"""


def task_in(argv: list[str]) -> str | None:
    """The value of ``--task`` among `argv`, if any (so ``--help`` can list that task's models)."""
    for position, token in enumerate(argv):
        if token == "--task" and position + 1 < len(argv):
            return argv[position + 1]
        if token.startswith("--task="):
            return token.split("=", 1)[1]
    return None


def model_help(task_name: str) -> str:
    """The ``--model`` help of one task: its model names and default."""
    from codecloop.tasks import get_task_class

    task_class = get_task_class(task_name)
    return f"{task_name} model: {task_class.model_help} (default: {task_class.default_model})"


def add_config_flags(parser: argparse.ArgumentParser, task: str | None = None,
                     sections: dict[str, tuple[str, ...]] | None = None) -> None:
    """One flag per config key. With `sections` (each task's config section, for ``--help``), generic keys
    are grouped as hyper-parameters and runtime settings and task keys apart: with `task`, only that
    task's own (and ``--model`` lists its models), the other tasks' keys hidden; without, each names the
    tasks that take it."""
    parser.add_argument("--config", metavar="FILE.yaml", help="YAML file of config keys (flags override it)")
    groups = {
        "hyper": parser.add_argument_group("hyper-parameters"),
        "runtime": parser.add_argument_group("runtime settings"),
    }
    sections = sections or {}
    task_group = parser.add_argument_group(f"keys of task {task}" if task else "task keys (each task takes its own)")
    for name, item in config_keys().items():
        flags = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
        bounds = range_text(item)
        help_text = f"{item.metadata['help']} ({f'{bounds}; ' if bounds else ''}default: {item.default})"
        takers = [taker for taker, section in sections.items() if name in section]
        group = groups[item.metadata["group"]] if not takers else task_group
        if name == "model" and task:
            help_text = model_help(task)
        elif takers and task:
            help_text = help_text if task in takers else argparse.SUPPRESS
        elif takers and len(takers) < len(sections):
            help_text = f"[{', '.join(takers)}] {help_text}"
        if str(item.type).startswith("bool"):
            group.add_argument(*flags, dest=name, nargs="?", const="true", default=None, metavar="BOOL", help=help_text)
        else:
            group.add_argument(*flags, dest=name, default=None, metavar=name.upper(),
                               choices=item.metadata["choices"], help=help_text)


def add_grid_flags(parser: argparse.ArgumentParser) -> None:
    """``experiment --grid FILE.yaml``: one experiment per cell of a grid file, then one combined report."""
    group = parser.add_argument_group(
        "experiment grids",
        "--grid runs one experiment per cell of a grid file (keys: config, base, cells, grid, launcher; see "
        "trainers/grid.py and the README) into OUT/<cell name>/ (OUT: --out, default runs/grid-<file stem>), "
        "skipping finished cells and resuming interrupted ones, and writes OUT/grid.csv, grid_recovery.csv, "
        "grid.md and grid.png across cells. Other flags apply to every cell; a bad cell is reported, the others "
        "still run, and the exit status is then 2.")
    group.add_argument("--grid", metavar="FILE.yaml", default=None, help="grid file to expand and run")
    group.add_argument("--launcher", default=None,
                       help="with --grid: run each cell as `LAUNCHER -m codecloop experiment ...`, e.g. "
                            "'torchrun --nproc_per_node 8' (default: the grid file's launcher, else in this "
                            "process; none: in this process)")


def given_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The config keys given as flags, type-checked (for --grid, where they apply to every cell)."""
    return {name: coerce(name, getattr(args, name)) for name in config_keys() if getattr(args, name, None) is not None}


def config_from_args(args: argparse.Namespace) -> Config:
    """Defaults, then the YAML file, then the flags given; every value type-checked, and a key of
    another task's section (in the file or among the flags) an error naming the key and the task."""
    from_file = load_yaml(args.config) if args.config else {}
    flags = given_flags(args)
    config = Config(**{**from_file, **flags}).validate()
    check_task_keys(config.task, from_file, f"config file {args.config}: ")
    check_task_keys(config.task, flags)
    return config


def build_parser(task: str | None = None,
                 sections: dict[str, tuple[str, ...]] | None = None) -> argparse.ArgumentParser:
    """The `codecloop` parser with all subcommands (`task` and `sections`: whose keys ``--help`` lists, see
    `add_config_flags`)."""
    parser = argparse.ArgumentParser(
        prog="codecloop", description=__doc__, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser(
        "demo", help="the embedded default: packaged photos and clips, a pretrained network, sweep, retrain, recovery",
        description="Runs the whole protocol offline on real photos and video frames shipped in pip packages "
                    "with an ImageNet-pretrained EfficientNet-Lite0: JPEG (or H.264 CRF) sweep, distillation "
                    "fine-tuning on compressed images, sweep again, recovery table and plot.",
    )
    demo.add_argument("--codec", choices=("jpeg", "h264"), default="jpeg",
                      help="jpeg: photos, crops and frames; h264: frame sequences through a CRF ladder")
    demo.add_argument("--codecs", default=None,
                      help="codecs to sweep besides --codec, comma-separated (e.g. jpeg,webp,avif): every codec's "
                           "agreement against bits per pixel on one plot and the table at equal bitrate")
    demo.add_argument("--out", default=None, help="run directory (default: runs/demo, or runs/demo-h264)")
    demo.add_argument("--retrain_steps", type=int, default=None, help="fine-tuning steps (default: the demo's own)")
    demo.add_argument("--wandb", choices=("online", "offline", "disabled"), default="disabled", help="W&B mode")
    demo.add_argument("--seed", type=int, default=0,
                      help="seed of the fine-tuning's crops, levels and order (the data and held-out set stay)")
    for name, help_text in CONFIG_COMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        if name == "experiment":
            add_grid_flags(sub)
        add_config_flags(sub, task, sections)
    compress = commands.add_parser(
        "compress", help="write a real JPEG copy of a dataset (layout kept), reporting bits per pixel",
        description="Re-encode every image under --src as a real JPEG file under --dst, same layout. Files are "
                    "written under a temporary name and renamed when whole; existing outputs are skipped.",
    )
    compress.add_argument("--codec", choices=("jpeg",), default="jpeg",
                          help="codec: jpeg (H.264 copies of video datasets are `codecloop transcode` ladders)")
    compress.add_argument("--quality", required=True, type=int, help="JPEG quality 1..100")
    compress.add_argument("--src", required=True, type=Path, help="source dataset folder")
    compress.add_argument("--dst", required=True, type=Path, help="destination folder")
    compress.add_argument("--workers", type=int, default=None, help="encoding threads")
    transcode = commands.add_parser(
        "transcode", help="build the CRF ladder cache (H.264, HEVC, AV1) of a video or image-sequence dataset",
        description="Encode every clip under --src (video files of any codec PyAV reads, or folders of ordered "
                    "frames) with each of --codecs (libx264, libx265, SVT-AV1) at each CRF: yuv420p, closed GOPs, "
                    "a keyframe every --keyint frames, as NVDEC wants. Writes DST/<clip>/crfNN.mp4 (H.264), "
                    "hevc-crfNN.mp4, av1-crfNN.mp4 and DST/manifest.csv (codec, frames, fps, size, bits per pixel, "
                    "PSNR against the source). Resumable: a rerun skips finished rungs.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    transcode.add_argument("--src", required=True, type=Path, help="folder of videos or of frame folders")
    transcode.add_argument("--dst", required=True, type=Path, help="ladder folder (created)")
    transcode.add_argument("--codecs", default="h264", help="ladder codecs, comma-separated: h264, hevc, av1")
    transcode.add_argument("--crfs", default=None,
                           help="CRFs to encode for every codec, on each codec's scale (H.264 / HEVC 0..51, AV1 "
                                f"0..63); default: H.264 / HEVC {','.join(map(str, DEFAULT_LADDER))}, AV1 "
                                f"{','.join(map(str, AV1_LADDER))}")
    transcode.add_argument("--preset", default="veryfast", help="x264 / x265 preset (SVT-AV1: its matching number)")
    transcode.add_argument("--keyint", type=int, default=15, help="frames between keyframes (1..15)")
    transcode.add_argument("--fps", default="25", help="frame rate given to image sequences")
    transcode.add_argument("--workers", type=int, default=None, help="clips encoded in parallel (default: cores)")
    synthetic = commands.add_parser(
        "make-synthetic", help="write a small dataset in a real dataset's on-disk layout (to check an install)",
        description="Shapes with known boxes, masks and keypoints, rendered depth, and short moving-shape videos, "
                    "with fine textures that compression visibly hurts, written file for file in a real "
                    "dataset's layout (--format): COCO JSON (detection, pose); image + mask folders, Cityscapes, "
                    "Pascal VOC 2012 or ADE20K (segmentation); image + 16-bit depth folders, KITTI depth or "
                    "NYU Depth v2 (depth); UCF101 or HMDB51 with their split files (action). Written to a "
                    "temporary folder and renamed when whole.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    synthetic.add_argument("--task", required=True, choices=("detection", "segmentation", "pose", "depth", "action"))
    synthetic.add_argument("--format", default=None,
                           help="dataset layout to write (default: folder, or coco for detection / pose); "
                                "segmentation: folder, cityscapes, voc, ade20k; depth: folder, kitti, nyu; "
                                "action: ucf101, hmdb51")
    synthetic.add_argument("--out", required=True, type=Path, help="dataset folder to create (must not hold files)")
    synthetic.add_argument("--train", type=int, default=24, help="training images")
    synthetic.add_argument("--val", type=int, default=8, help="validation images")
    synthetic.add_argument("--size", default="96x128", help="image height x width")
    synthetic.add_argument("--seed", type=int, default=0, help="random seed")
    bench = commands.add_parser(
        "bench", help="images/s (clips/s) of the input pipeline, the model step or both, against the peer pipelines",
        description="Throughput with device synchronisation: warm-up, then --repeats runs of --iterations "
                    "batches; median and spread. data: codecloop (DALI + JPEG stage) against bare DALI (no codec "
                    "stage), a torch DataLoader with PIL + transforms.v2.JPEG and, on CUDA, torchvision's nvJPEG "
                    "encode/decode; model: a training step on random tensors; train: the pipeline feeding the "
                    "step, codec against clean input. --codec h264 times clips: a CRF rung drawn per clip "
                    "(NVDEC, or PyAV without a GPU) against the clean rung and a DataLoader decoding with PyAV, "
                    "and a torchvision video model. Rows are appended to OUT/bench-<device>-<precision>-"
                    "<versions>.csv and .json and printed as a table.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    bench.add_argument("--mode", choices=("data", "model", "train", "sweep", "feeder", "codecs"), default="data",
                       help="what is timed (sweep: a 9-level JPEG sweep's evaluation pipelines, one pass against "
                            "a pass per level; feeder: the sample plan alone, whole epochs of --samples samples "
                            "without reading or decoding; codecs: each registered online codec on the CPU, ms per "
                            "image on one thread (repeats of --iterations images after --warmup) and images/s on "
                            "--threads (repeats of --batch_size images) at 224x224 and native size, on the packaged "
                            "photos (--images of them) or --data, and its share of a GPU step of "
                            "--gpu_images_per_sec)")
    bench.add_argument("--samples", type=int, default=1_000_000, help="feeder: samples per planned epoch")
    bench.add_argument("--codec", choices=("jpeg", "h264"), default="jpeg",
                       help="jpeg: image pipelines; h264: video pipelines on a CRF ladder")
    bench.add_argument("--data", type=Path, default=None,
                       help="jpeg: ImageFolder root whose train/ images are read (default: JPEGs written from the "
                            "packaged photos); h264: a `codecloop transcode` ladder (default: the packaged clips "
                            "transcoded at CRF 0, 18, 28, 40, 51)")
    bench.add_argument("--images", type=int, default=256,
                       help="images to write when --data is not given (h264: clips per epoch, repeating the ladder's); "
                            "an epoch repeats its images to at least 20 batches, so the pipelines prefetch")
    bench.add_argument("--batch_size", type=int, default=64,
                       help="batch size (halved on a device out-of-memory, torch's or DALI's)")
    bench.add_argument("--crop", type=int, default=None, help="network input size (default: 224 jpeg, 112 h264)")
    bench.add_argument("--level", default=None, help="level spec drawn per sample (jpeg: quality, default 5-95) "
                       "or per clip (h264: CRF, snapped to the ladder's rungs, default 18-51)")
    bench.add_argument("--frames", type=int, default=16, help="h264: frames per clip (stride 2)")
    bench.add_argument("--iterations", type=int, default=20, help="timed batches per repeat")
    bench.add_argument("--warmup", type=int, default=5, help="untimed batches first")
    bench.add_argument("--repeats", type=int, default=3, help="timed repeats (median and spread)")
    bench.add_argument("--model", default=None,
                       help="model of the model and train modes: a timm model (jpeg, default resnet50) or a "
                            "torchvision video model (h264, default r3d_18)")
    bench.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                       help="auto: bf16 autocast on GPU, fp32 on CPU")
    bench.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: --threads)")
    bench.add_argument("--threads", type=int, default=None, help="DALI CPU threads (default: cores)")
    bench.add_argument("--contenders", default=None,
                       help="comma-separated data contenders (default: codecloop, dali-bare, torch-dataloader, "
                            "torchvision-nvjpeg)")
    bench.add_argument("--level_count", type=int, default=3,
                       help="codecs: how many of each codec's default levels (1: the middle one; 3: the most and "
                            "least compressed and the middle one)")
    bench.add_argument("--gpu_images_per_sec", type=float, default=GPU_IMAGES_PER_SEC,
                       help=f"codecs: a GPU training step's rate, to which each codec's cost is compared (default: "
                            f"{GPU_SOURCE}; give your own model's, from --mode model on the GPU)")
    bench.add_argument("--out", type=Path, default=Path("bench/results"), help="folder of the results files")
    report = commands.add_parser("report", help="rebuild tables and plots of a run directory from its CSV files")
    report.add_argument("run_dir", type=Path, help="run directory holding sweep.csv")
    report.add_argument("--metric", default=None,
                        help="metric to plot and recover (default: the primary metric of the run's task)")
    report.add_argument("--at_bpp", default=None,
                        help="bits per pixel at which each codec's metric is interpolated (e.g. 0.1,0.25,0.5,1): "
                             "the table 'metric at equal bitrate' with the codec that wins at each rate, also "
                             "written to equal_rate.csv (default: the run's at_bpp, else 0.1,0.25,0.5,1,2 when "
                             "the run swept several codecs)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse and dispatch; bad input exits with status 2 and a message naming the culprit."""
    argv = sys.argv[1:] if argv is None else argv
    wants_help = any(token in ("-h", "--help") for token in argv)
    task = task_in(argv) if wants_help else None
    try:
        parser = build_parser(task, task_sections() if wants_help else None)
    except ValueError as error:
        print(f"codecloop: error: {error}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    try:
        if getattr(args, "grid", None):
            from codecloop.trainers.grid import run_grid

            if args.config:
                raise ValueError("--config and --grid: name the base config file as `config:` in the grid file")
            flags = given_flags(args)
            failures = run_grid(args.grid, out=flags.pop("out", None), flags=flags, launcher=args.launcher)
            return 2 if failures else 0
        if getattr(args, "launcher", None):
            raise ValueError("--launcher goes with --grid")
        if args.command == "check-data":
            from codecloop.trainers.commands import check_data

            return check_data(config_from_args(args))
        if args.command in CONFIG_COMMANDS:
            from codecloop.trainers.commands import run_command

            run_command(args.command, config_from_args(args))
        elif args.command == "demo":
            from codecloop.trainers.demo import run_demo

            out = args.out or ("runs/demo" if args.codec == "jpeg" else f"runs/demo-{args.codec}")
            run_demo(Path(out), retrain_steps=args.retrain_steps, wandb=args.wandb, codec=args.codec,
                     codecs=args.codecs, seed=args.seed)
        elif args.command == "compress":
            from codecloop.dali_pipes.compress import compress_dataset

            print(compress_dataset(args.src, args.dst, args.quality, workers=args.workers).summary())
        elif args.command == "transcode":
            from codecloop.dali_pipes.ladder import transcode

            crfs = None if args.crfs is None else parse_crfs(args.crfs)
            result = transcode(args.src, args.dst, crfs=crfs, preset=args.preset, keyint=args.keyint, fps=args.fps,
                               workers=args.workers, codecs=args.codecs)
            for source, reason in result.failed.values():
                print(f"skipped {source}: {reason}", file=sys.stderr)
            print(result.summary())
        elif args.command == "bench" and args.mode == "codecs":
            from codecloop.bench.codec_cost import run_codec_cost

            if args.level or args.contenders or args.codec != "jpeg":
                raise ValueError("bench --mode codecs times every registered codec at its own default levels "
                                 "(--level_count); leave out --codec, --level and --contenders")
            run_codec_cost(data=args.data, images=args.images, threads=args.threads, batch_size=args.batch_size,
                           warmup=args.warmup, iterations=args.iterations, repeats=args.repeats,
                           level_count=args.level_count, gpu_images_per_sec=args.gpu_images_per_sec, out=args.out)
        elif args.command == "bench":
            from codecloop.bench.throughput import run_bench

            run_bench(args.mode, codec=args.codec, data=args.data, images=args.images, batch_size=args.batch_size,
                      crop=args.crop, level=args.level, frames=args.frames,
                      iterations=args.iterations, warmup=args.warmup, repeats=args.repeats, model=args.model,
                      precision=args.precision, workers=args.workers, threads=args.threads,
                      contenders=args.contenders.split(",") if args.contenders else None, out=args.out,
                      samples=args.samples)
        elif args.command == "make-synthetic":
            from codecloop.tasks.dense_common import parse_input_size
            from codecloop.synthetic.datasets import make_synthetic

            height, width = parse_input_size(args.size, 0)
            out = make_synthetic(args.task, args.out, format=args.format, train=args.train, val=args.val,
                                 height=height, width=width, seed=args.seed)
            layout = f" --format {args.format}" if args.format else ""
            if args.task == "action":
                from codecloop.synthetic.action import run_hint

                print(f"wrote a synthetic action dataset to {out}; try: {run_hint(out, args.format)}")
            else:
                print(f"wrote a synthetic {args.task} dataset to {out}; try: codecloop experiment --task {args.task} "
                      f"--data {out}{layout} --input_size {args.size} --max_steps 100")
        elif args.command == "report":
            from codecloop.trainers.protocol import rebuild_report

            rebuild_report(args.run_dir, args.metric, args.at_bpp)
    except (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, NotImplementedError,
            BadImageError, FloatingPointError, DiskFullError) as error:
        print(f"codecloop {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
