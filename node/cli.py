"""The `dfnode` console command."""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

from core.errors import ConfigError, DfnodeError
from inference.allocator import reuse_large_buffers

DEFAULT_CONFIG = Path("config.yaml")


def _config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="config file (default: config.yaml)")


def _cmd_serve(args: argparse.Namespace) -> int:
    from node.config import load_config
    from node.logs import configure_logging
    from node.service import run_forever

    config = load_config(args.config)
    if args.role:
        config = config.with_roles(args.role)
    configure_logging(args.log_format or config.logging.format, "debug" if args.verbose else config.logging.level)
    return run_forever(config)


def _cmd_audit(args: argparse.Namespace) -> int:
    from node.audit import AuditQuery
    from node.audit_report import audit_report, parse_time
    from node.config import load_config

    query = AuditQuery(since=parse_time(args.since) if args.since else None,
                       until=parse_time(args.until) if args.until else None,
                       event=args.event, ae_title=args.ae, address=args.address, uid=args.uid, limit=args.limit)
    print(audit_report(load_config(args.config), query, as_json=args.json))
    return 0


def _read_password(from_stdin: bool) -> str:
    """The new password: one line of standard input, or typed twice at a prompt."""
    import getpass

    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass("password (10 characters or more): ")
    if getpass.getpass("again: ") != first:
        raise ValueError("the two passwords differ")
    return first


def _cmd_user(args: argparse.Namespace) -> int:
    from node.config import load_config
    from node.db import Database
    from node.tables import format_table
    from node.users import add_user, list_users, remove_user

    config = load_config(args.config)
    db = Database(config.storage.database)
    try:
        if args.action == "add":
            account = add_user(db, args.name, _read_password(args.password_stdin), args.role, replace=args.replace)
            print(f"user {account.name} ({account.role}) saved")
        elif args.action == "remove":
            remove_user(db, args.name)
            print(f"user {args.name} removed")
        else:
            print(format_table(["user", "role"], [[a.name, a.role] for a in list_users(db)]))
    finally:
        db.close()
    return 0


def _cmd_check_config(args: argparse.Namespace) -> int:
    from node.config import load_config
    from node.network import TlsContexts
    from node.service import check_models

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"{exc.source}: invalid configuration", file=sys.stderr)
        for path, message in exc.problems:
            print(f"  {path}: {message}", file=sys.stderr)
        return 2
    problems, warnings = check_models(config)
    try:
        TlsContexts(config)
    except ConfigError as exc:
        problems += exc.problems
    for path, message in problems:
        print(f"  {path}: {message}", file=sys.stderr)
    for warning in warnings:
        print(f"  warning: {warning}", file=sys.stderr)
    if problems:
        return 2
    print(f"{args.config}: OK ({len(config.routes)} routes, {len(config.peers)} peers, "
          f"models: {', '.join(config.routed_models()) or 'none'})")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from node.config import load_config
    from node.status import status_report

    print(status_report(load_config(args.config), limit=args.limit))
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from node.config import load_config
    from node.predict import predict_files

    config = load_config(args.config)
    table, unreadable = predict_files(config, args.files, model=args.model)
    print(table)
    if unreadable:
        print(f"{unreadable} of {len(args.files)} file(s) could not be read", file=sys.stderr)
        return 1
    return 0


def _cmd_samples(args: argparse.Namespace) -> int:
    from inference.training.sample_studies import write_ct_series, write_radiograph

    if args.slices < 1 or args.size < 64:
        raise ValueError("--slices must be at least 1 and --size at least 64")
    radiograph = write_radiograph(args.out / "radiograph")
    ct = write_ct_series(args.out / "ct", slices=args.slices, size=args.size)
    print(f"wrote {radiograph} (a real computed radiograph of the lower leg) and {len(ct)} CT slices in "
          f"{args.out / 'ct'}\nsend them with: storescu -aet PACS -aec DFNODE +sd +r 127.0.0.1 11112 {args.out}")
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    from inference.training.synth import CPU_GAN_SIZE, GPU_GAN_SIZE, KIND_FOR_MODEL, SynthSpec, synthesise

    kind = KIND_FOR_MODEL.get(args.kind, args.kind)
    if args.native:
        from inference.training.forensic_card import test_set

        manifest = test_set(kind, args.seed, args.count, args.out, pristine=args.pristine, gan=args.gan,
                            only=tuple(args.family or ()))
        print(f"wrote the native test set {manifest}")
        return 0
    from inference.model import torch_device

    device = torch_device(args.device)
    gan_size = args.gan_size or (GPU_GAN_SIZE if device.type == "cuda" else CPU_GAN_SIZE)
    spec = SynthSpec(kind, args.count, args.size, args.seed, args.real_fraction, tuple(args.family or ()),
                     args.gan_steps, args.gan_sources, gan_size)
    manifest = synthesise(spec, args.out, workers=args.workers, device=device)
    print(f"wrote {2 * args.count} images and {manifest}")
    return 0


def _train_spec(args: argparse.Namespace):
    from inference.training.synth import KIND_FOR_MODEL
    from inference.training.train import TrainSpec

    return TrainSpec(
        model_name=args.model, kind=args.kind or KIND_FOR_MODEL.get(args.model, "xray"), data=args.data,
        weights_dir=args.weights_dir, run_dir=args.run_dir or Path("runs") / args.model,
        input_size=args.input_size, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        patience=args.patience, seed=args.seed, max_minutes=args.max_minutes, device=args.device,
        workers=args.workers, exclude_families=tuple(args.exclude or ()), aggregation=args.aggregation,
        region_weight=args.region_weight, online_pairs=args.online_pairs, dropout=args.dropout,
        drop_path=args.drop_path, degrade_warmup=args.degrade_warmup, cell_pooling=args.cell_pooling,
        resume=not args.no_resume, init_from=args.init_from, command="dfnode " + shlex.join(args.argv),
        data_description=args.data_description or "")


def _forensic_spec(args: argparse.Namespace):
    from inference.training.forensic_train import ForensicSpec
    from inference.training.synth import KIND_FOR_MODEL

    return ForensicSpec(
        model_name=args.model, kind=args.kind or KIND_FOR_MODEL.get(args.model, "xray"),
        run_dir=args.run_dir or Path("runs") / args.model, weights_dir=args.weights_dir,
        resume_dir=args.resume_dir, pristine=args.pristine, minutes=args.minutes,
        front_minutes=args.front_minutes, crop=args.crop, batch_pairs=args.batch_pairs, lr=args.forensic_lr,
        train_sources=args.train_sources, val_sources=args.val_sources, checkpoint_minutes=args.checkpoint_minutes,
        validate_minutes=args.validate_minutes, val_pairs=args.val_pairs, level_share=args.level_share,
        gan_steps=args.gan_steps, gan_sources=args.gan_sources,
        exclude_families=tuple(args.exclude or ()), seed=args.seed,
        threads=args.threads)


def _cmd_train(args: argparse.Namespace) -> int:
    from inference.training.evaluate import format_report
    from inference.training.train import train

    if (args.design or ("letterbox" if args.data else "forensic")) == "forensic":
        from inference.training.forensic_card import probe, train_model

        if args.probe:
            probe(_forensic_spec(args))
            return 0
        report = train_model(_forensic_spec(args), args.test_count, "dfnode " + shlex.join(args.argv))
        if report is not None:
            print(format_report(report))
        return 0
    if args.data is None:
        raise ValueError("--data is needed for --design letterbox: a synth manifest, a CSV or a folder")
    report = train(_train_spec(args))
    print(format_report(report))
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from inference.training.evaluate import evaluate_model, format_report, leave_one_family_out

    if args.leave_out:
        report = leave_one_family_out(_train_spec(args), args.leave_out, args.out)
    elif args.data is None:
        raise ValueError("--data is needed: the images to measure the model on (a manifest, a CSV or a folder)")
    else:
        report = evaluate_model(args.weights, args.data, args.split, args.out, workers=args.workers,
                                device=args.device)
    print(format_report(report))
    return 0


def _cell_pooling(value: str) -> str:
    from inference.pooling import top_cells

    try:
        top_cells(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def _train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path,
                   help="a synth manifest, a CSV of path,label,group, or a folder with real/ and fake/ (the "
                        "letterbox design; the forensic design makes its twin crops while it trains)")
    p.add_argument("--model", default="knee", help="model name: the card is weights/<model>.json")
    p.add_argument("--kind", choices=["xray", "ct"], help="preprocessing kind (default: from the model name)")
    p.add_argument("--weights-dir", type=Path, default=Path("weights"))
    p.add_argument("--run-dir", type=Path, help="checkpoints and plots (default: runs/<model>)")
    p.add_argument("--input-size", type=int, default=380)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--patience", type=int, default=5, help="epochs without a better validation AUC")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-minutes", type=float, help="stop after this long, keeping the best checkpoint")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--workers", type=int, default=1, help="data-loading processes")
    p.add_argument("--exclude", action="append", help="leave a manipulation family out of training")
    p.add_argument("--region-weight", type=float, default=0.0,
                   help="weight of an auxiliary loss on where the manipulation is (needs boxes, as synth writes)")
    p.add_argument("--online-pairs", type=int, default=0,
                   help="pairs synthesised afresh every epoch besides the files (phantoms, the data's local families)")
    p.add_argument("--degrade-warmup", type=int, default=0, metavar="EPOCHS",
                   help="epochs over which the benign degradations' odds rise from none to full")
    p.add_argument("--cell-pooling", type=_cell_pooling, default="mean", metavar="mean|top<k>",
                   help="the image's logit from the last feature map's cell logits: their mean (EfficientNet's "
                        "own head) or the mean of the k highest, so that a small manipulated region counts")
    p.add_argument("--dropout", type=float, default=0.0, help="dropout before the head (training only)")
    p.add_argument("--drop-path", type=float, default=0.0, help="stochastic depth rate (training only)")
    p.add_argument("--aggregation", choices=["max", "mean"], default="max", help="series aggregation rule")
    p.add_argument("--no-resume", action="store_true", help="start afresh even if a checkpoint exists")
    p.add_argument("--init-from", type=Path, metavar="CARD",
                   help="start from the weights of this model card (e.g. weights/knee.json) instead of random ones")
    p.add_argument("--data-description", help="what the data is, for the model card")


def _forensic_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("the forensic design (inference.forensic; the default without --data)")
    g.add_argument("--design", choices=["forensic", "letterbox"],
                   help="forensic: a full-resolution front and the B4 on twin crops at native scale; letterbox: "
                        "the whole image resized to --input-size (default: forensic, letterbox with --data)")
    g.add_argument("--pristine", type=Path, metavar="FOLDER",
                   help="your own pristine images (DICOM or 16-bit PNG, at the size your modality makes them): "
                        "sources beside the phantoms, a third of them kept for the test set")
    g.add_argument("--minutes", type=float, default=360.0, help="the run's budget over every resume")
    g.add_argument("--front-minutes", type=float, default=6.0, help="the front first, with a small probe network")
    g.add_argument("--crop", type=int, default=192, help="twin crops' side, in native pixels")
    g.add_argument("--batch-pairs", type=int, default=8, help="twin pairs per batch")
    g.add_argument("--forensic-lr", type=float, default=1e-3, help="peak learning rate")
    g.add_argument("--train-sources", type=int, default=48, help="native phantoms to crop from")
    g.add_argument("--probe", action="store_true",
                   help="the learning gate: train and validate only (no test set, no card); the curve is in the "
                        "run folder's resume.json")
    g.add_argument("--val-pairs", type=int, default=96, help="validation twin pairs per curriculum level")
    g.add_argument("--level-share", type=float, default=0.3,
                   help="most of the budget one curriculum level may take before the next")
    g.add_argument("--val-sources", type=int, default=8, help="validation phantoms (crops, and the threshold)")
    g.add_argument("--test-count", type=int, default=48, help="test-stream phantoms in the native test set")
    g.add_argument("--checkpoint-minutes", type=float, default=15.0)
    g.add_argument("--gan-steps", type=int, default=1500,
                   help="training steps of the 64-px synthesis GAN of the gan family (once per run; 0: no gan family)")
    g.add_argument("--gan-sources", type=int, default=512, help="pristine images the synthesis GAN learns from")
    g.add_argument("--resume-dir", type=Path, help="where the committable state goes (float16 weights and "
                                                   "resume.json; default: the run folder), and a new machine "
                                                   "resumes from")
    g.add_argument("--validate-minutes", type=float, default=5.0)
    g.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dfnode", description="DICOM node that screens images for manipulation")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the node: receive, evaluate, send Structured Reports")
    _config_arg(p)
    p.add_argument("--log-format", choices=["text", "json"], help="overrides logging.format in the config")
    p.add_argument("--role", action="append", choices=["all", "receiver", "evaluator", "deliverer"],
                   help="what this process does (repeat for several; overrides node.roles): receiver (the "
                        "Storage SCP and the index), evaluator (the models), deliverer (sending reports), all")
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("check-config", help="validate a config and the models it routes to")
    _config_arg(p)
    p.set_defaults(func=_cmd_check_config)

    p = sub.add_parser("status", help="recent series: received, routed, scores, verdict, SR delivery")
    _config_arg(p)
    p.add_argument("--limit", type=int, default=20)
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser("audit", help="the audit trail: associations, instances, job states, reports sent")
    _config_arg(p)
    p.add_argument("--since", help="30m, 2h, 7d or an ISO date-time")
    p.add_argument("--until", help="30m, 2h, 7d or an ISO date-time")
    p.add_argument("--event", help="an event or its prefix: association, association.rejected, instance, "
                                   "series, report, delivery, retention, tls, node")
    p.add_argument("--ae", help="calling or called AE title")
    p.add_argument("--address", help="peer address")
    p.add_argument("--uid", help="a study, series or SOP instance UID")
    p.add_argument("--limit", type=int, default=100, help="the latest N events (default 100)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=_cmd_audit)

    p = sub.add_parser("user", help="console users: add (or --replace a password), list, remove")
    users = p.add_subparsers(dest="action", required=True)
    q = users.add_parser("add", help="add a user; the password is asked for twice, or read from stdin")
    _config_arg(q)
    q.add_argument("name")
    q.add_argument("--role", choices=["viewer", "admin"], default="viewer")
    q.add_argument("--password-stdin", action="store_true", help="read the password from one line of stdin")
    q.add_argument("--replace", action="store_true", help="set a new password and role for an existing user")
    q = users.add_parser("list", help="list users and their roles")
    _config_arg(q)
    q = users.add_parser("remove", help="remove a user")
    _config_arg(q)
    q.add_argument("name")
    p.set_defaults(func=_cmd_user)

    p = sub.add_parser("predict", help="score DICOM or PNG files offline and print a table")
    _config_arg(p)
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--model", help="model name (default: routed by DICOM tags; required for PNG)")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("samples", help="write sample studies to send to a node: a real radiograph and a "
                                       "synthetic chest CT series")
    p.add_argument("--out", type=Path, required=True, help="folder to write radiograph/ and ct/ into")
    p.add_argument("--slices", type=int, default=40, help="CT slices (default 40)")
    p.add_argument("--size", type=int, default=512, help="CT slice side in pixels (default 512)")
    p.set_defaults(func=_cmd_samples)

    p = sub.add_parser("synth", help="synthesise labelled pristine/manipulated images and a manifest")
    p.add_argument("--kind", default="knee", help="knee/xray or lung/ct")
    p.add_argument("--count", type=int, default=1000, help="number of sources (each gives two images)")
    p.add_argument("--size", type=int, default=320)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--real-fraction", type=float, default=0.15, help="share of sources cropped from real images")
    p.add_argument("--family", action="append", help="only this manipulation family (repeatable; with --native too)")
    p.add_argument("--gan-steps", type=int, default=1500, help="training steps of the whole-image synthesis GAN")
    p.add_argument("--gan-sources", type=int, default=512, help="pristine images the synthesis GAN learns from")
    p.add_argument("--gan-size", type=int, choices=(64, 128, 256),
                   help="the synthesis GAN's image size (default: 256 when it trains on a GPU, 64 on a CPU, "
                        "where 256 takes about 7 s a step)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="cpu", help="where the synthesis GAN trains: cpu, cuda or auto "
                                                   "(results are deterministic per device)")
    p.add_argument("--pristine", type=Path, metavar="FOLDER", help="with --native: your own pristine images too")
    p.add_argument("--gan", type=Path, metavar="FILE",
                   help="with --native: a forensic run's synthesis GAN (gan.safetensors), for the gan family")
    p.add_argument("--native", action="store_true",
                   help="the forensic design's test set: --count test-stream phantoms at native size and the real "
                        "test images, each with one manipulated copy (families in turn)")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser("train", help="train an EfficientNet-B4: the forensic design (native scale, from "
                                     "phantoms and packaged real images), or the letterbox design on labelled data")
    _train_arguments(p)
    _forensic_arguments(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("evaluate", help="measure a model on a dataset, or on a held-out manipulation family")
    p.add_argument("--weights", type=Path, default=Path("weights/knee.json"), help="the model card")
    p.add_argument("--split", choices=["test", "val", "train", "all"], default="test")
    p.add_argument("--out", type=Path, default=Path("runs/evaluate"))
    p.add_argument("--leave-out", metavar="FAMILY", help="train without FAMILY, then test on it")
    _train_arguments(p)
    p.set_defaults(func=_cmd_evaluate)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.argv = argv
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    reuse_large_buffers()
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except (DfnodeError, FileNotFoundError, ValueError) as exc:  # bad input named by the code that found it
        print(f"dfnode: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
