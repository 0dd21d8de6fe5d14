"""``pyhv img``: qemu-img's subcommands, names and options, on pyhv's block layer.

Errors print one line on stderr and exit non-zero; exit codes follow qemu-img (check: 2
corruptions, 3 leaks; compare: 1 different, 2 error).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Dict, List, Optional

from ..errors import PyhvError
from .backend import BlockBackend, open_image
from .errors import BlockOptionError
from .qcow2.check import check_image
from .qcow2.header import COMPAT_LAZY_REFCOUNTS, INCOMPAT_CORRUPT, INCOMPAT_DIRTY
from .qcow2.image import Qcow2Image
from .sizes import human_size, parse_size
from . import ops


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, no usage dump
        raise BlockOptionError(f"{self.prog}: {message}")


def _options(values: Optional[List[str]]) -> Dict[str, str]:
    result: Dict[str, str] = {}
    for group in values or []:
        for item in group.split(","):
            if not item:
                continue
            key, sep, value = item.partition("=")
            if not sep:
                raise BlockOptionError(f"option '{item}' needs a value (key=value)")
            result[key.strip()] = value.strip()
    return result


def _progress_printer(enabled: bool):
    if not enabled:
        return None

    def show(fraction: float) -> None:
        sys.stdout.write("    (%.2f/100%%)\r" % (min(fraction, 1.0) * 100))
        sys.stdout.flush()
    return show


# ----- subcommands -----
def cmd_create(args: argparse.Namespace) -> int:
    options = _options(args.o)
    if args.b:
        options["backing_file"] = args.b
    if args.F:
        options["backing_fmt"] = args.F
    size = parse_size(args.size) if args.size is not None else None
    ops.create_image(args.filename, args.f or "raw", size, options)
    return 0


def _format_specific(image: BlockBackend) -> Optional[dict]:
    if not isinstance(image, Qcow2Image):
        return None
    h = image.header
    data: dict = {"compat": "1.1" if h.version == 3 else "0.10", "compression-type": "zlib"}
    if h.version == 3:
        data["lazy-refcounts"] = bool(h.compatible_features & COMPAT_LAZY_REFCOUNTS)
    data["refcount-bits"] = h.refcount_bits
    if h.version == 3:
        data["corrupt"] = bool(h.incompatible_features & INCOMPAT_CORRUPT)
        data["extended-l2"] = False
    return {"type": "qcow2", "data": data}


def image_info(image: BlockBackend) -> dict:
    """qemu-img info's JSON object for one image."""
    info: dict = {}
    if isinstance(image, Qcow2Image) and image.header.backing_format:
        info["backing-filename-format"] = image.header.backing_format
    info["virtual-size"] = image.size
    info["filename"] = image.filename
    if isinstance(image, Qcow2Image):
        info["cluster-size"] = image.cluster_size
    info["format"] = image.format_name
    info["actual-size"] = image.allocated_file_size()
    if isinstance(image, Qcow2Image) and image.snapshots:
        info["snapshots"] = [{
            "icount": s.icount, "vm-state-size": s.vm_state_size, "date-sec": s.date_sec,
            "date-nsec": s.date_nsec, "vm-clock-sec": s.vm_clock_nsec // 10 ** 9,
            "vm-clock-nsec": s.vm_clock_nsec % 10 ** 9, "id": s.id, "name": s.name}
            for s in image.snapshots]
    specific = _format_specific(image)
    if specific:
        info["format-specific"] = specific
    if isinstance(image, Qcow2Image) and image.header.backing_file:
        info["full-backing-filename"] = image.backing_filename_full
        info["backing-filename"] = image.header.backing_file
    info["dirty-flag"] = bool(isinstance(image, Qcow2Image)
                              and image.header.incompatible_features & INCOMPAT_DIRTY)
    return info


def _print_info_human(info: dict) -> None:
    print(f"image: {info['filename']}")
    print(f"file format: {info['format']}")
    print(f"virtual size: {human_size(info['virtual-size'])} ({info['virtual-size']} bytes)")
    print(f"disk size: {human_size(info['actual-size'])}")
    if "cluster-size" in info:
        print(f"cluster_size: {info['cluster-size']}")
    if "backing-filename" in info:
        line = f"backing file: {info['backing-filename']}"
        if info["full-backing-filename"] != info["backing-filename"]:
            line += f" (actual path: {info['full-backing-filename']})"
        print(line)
        if "backing-filename-format" in info:
            print(f"backing file format: {info['backing-filename-format']}")
    if info.get("snapshots"):
        print("Snapshot list:")
        print("ID        TAG               VM SIZE                DATE     VM CLOCK     ICOUNT")
        for s in info["snapshots"]:
            print(f"{s['id']:<9} {s['name']:<17} {human_size(s['vm-state-size']):>7} "
                  f"{s['date-sec']:>20} {s['vm-clock-sec']:>12} {s['icount']:>10}")
    specific = info.get("format-specific")
    if specific:
        print("Format specific information:")
        for key, value in specific["data"].items():
            shown = str(value).lower() if isinstance(value, bool) else value
            print(f"    {key.replace('-', ' ')}: {shown}")


def cmd_info(args: argparse.Namespace) -> int:
    with open_image(args.filename, args.f, read_only=True) as image:
        chain = image.backing_chain() if args.backing_chain else [image]
        infos = [image_info(member) for member in chain]
    if args.output == "json":
        print(json.dumps(infos if args.backing_chain else infos[0], indent=4))
    else:
        for number, info in enumerate(infos):
            if number:
                print()
            _print_info_human(info)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    repair = args.r
    with open_image(args.filename, args.f, read_only=repair is None) as image:
        if not isinstance(image, Qcow2Image):
            raise BlockOptionError(f"'{args.filename}': format '{image.format_name}' does not "
                                   "support checks")
        result = check_image(image, repair)
        image_name, fmt = image.filename, image.format_name
    if args.output == "json":
        out = {"image-end-offset": result.image_end_offset,
               "total-clusters": result.total_clusters, "check-errors": result.check_errors}
        if result.leaks:
            out["leaks"] = result.leaks
        if result.corruptions:
            out["corruptions"] = result.corruptions
        if result.leaks_fixed:
            out["leaks-fixed"] = result.leaks_fixed
        if result.corruptions_fixed:
            out["corruptions-fixed"] = result.corruptions_fixed
        out.update({"allocated-clusters": result.allocated_clusters,
                    "filename": image_name, "format": fmt})
        if result.allocated_clusters:
            out["fragmented-clusters"] = result.fragmented_clusters
            out["compressed-clusters"] = result.compressed_clusters
        print(json.dumps(out, indent=4))
    else:
        _print_check_human(result)
    if result.check_errors:
        return 1
    if result.corruptions:
        return 2
    return 3 if result.leaks else 0


def _print_check_human(result) -> None:
    for message in result.messages:
        print(message, file=sys.stderr)
    if result.leaks_fixed or result.corruptions_fixed:
        print("The following inconsistencies were found and repaired:\n")
        print(f"    {result.leaks_fixed} leaked clusters")
        print(f"    {result.corruptions_fixed} corruptions\n")
        print("Double checking the fixed image now...")
    if not (result.leaks or result.corruptions or result.check_errors):
        print("No errors were found on the image.")
    if result.corruptions:
        print(f"\n{result.corruptions} errors were found on the image.\n"
              "Data may be corrupted, or further writes to the image may corrupt it.")
    if result.leaks:
        print(f"\n{result.leaks} leaked clusters were found on the image.\n"
              "This means waste of disk space, but no harm to data.")
    if result.total_clusters and result.allocated_clusters:
        total = result.total_clusters
        print("%d/%d = %.2f%% allocated, %.2f%% fragmented, %.2f%% compressed clusters" % (
            result.allocated_clusters, total, 100.0 * result.allocated_clusters / total,
            100.0 * result.fragmented_clusters / result.allocated_clusters,
            100.0 * result.compressed_clusters / result.allocated_clusters))
    print(f"Image end offset: {result.image_end_offset}")


def cmd_convert(args: argparse.Namespace) -> int:
    out_fmt = args.O or "raw"
    options = _options(args.o)
    if args.B:
        raise BlockOptionError("convert -B (output backing file) is not supported")
    with open_image(args.source, args.f, read_only=True) as src:
        ops.create_image(args.output, out_fmt, src.size, options)
        with open_image(args.output, out_fmt, read_only=False) as dst:
            ops.convert(src, dst, args.c, _progress_printer(args.p))
    if args.p:
        print()
    return 0


def cmd_resize(args: argparse.Namespace) -> int:
    text = args.size
    with open_image(args.filename, args.f, read_only=False) as image:
        if text[:1] in "+-":
            delta = parse_size(text[1:])
            new_size = image.size + delta if text[0] == "+" else image.size - delta
        else:
            new_size = parse_size(text)
        if new_size < image.size and not args.shrink:
            raise BlockOptionError("use the --shrink option to make an image smaller (data "
                                   "past the new end is lost)")
        image.truncate(new_size)
    print("Image resized.")
    return 0


def cmd_commit(args: argparse.Namespace) -> int:
    with open_image(args.filename, args.f, read_only=False) as image:
        if not isinstance(image, Qcow2Image):
            raise BlockOptionError(f"'{args.filename}' has no backing file to commit to")
        ops.commit(image, args.d, _progress_printer(args.p))
    print("Image committed.")
    return 0


def cmd_rebase(args: argparse.Namespace) -> int:
    if args.b is None:
        raise BlockOptionError("rebase needs -b BACKING (use -b '' to drop the backing file)")
    with open_image(args.filename, args.f, read_only=False) as image:
        if not isinstance(image, Qcow2Image):
            raise BlockOptionError(f"'{args.filename}': only qcow2 images have backing files")
        ops.rebase(image, args.b or None, args.F, args.u, _progress_printer(args.p))
    return 0


def _map_entry_json(extent) -> str:
    parts = [f'"start": {extent.start}', f'"length": {extent.length}',
             f'"depth": {extent.depth}', f'"present": {json.dumps(extent.present)}',
             f'"zero": {json.dumps(extent.zero)}', f'"data": {json.dumps(extent.data)}']
    if extent.host_offset is not None and extent.data:
        parts.append(f'"offset": {extent.host_offset}')
    return "{ " + ", ".join(parts) + "}"


def cmd_map(args: argparse.Namespace) -> int:
    with open_image(args.filename, args.f, read_only=True) as image:
        extents = image.block_status(0, image.size)
    if args.output == "json":
        print("[" + ",\n".join(_map_entry_json(e) for e in extents) + "]")
        return 0
    print("%-16s%-16s%-16s%s" % ("Offset", "Length", "Mapped to", "File"))
    for e in extents:
        if e.data and e.host_offset is not None:
            print("%-16s%-16s%-16s%s" % (_hex(e.start), _hex(e.length), _hex(e.host_offset),
                                         e.filename))
    return 0


def _hex(value: int) -> str:
    return "%#x" % value if value else "0"


def cmd_compare(args: argparse.Namespace) -> int:
    try:
        with open_image(args.first, args.f, read_only=True) as a, \
                open_image(args.second, args.F or args.f, read_only=True) as b:
            mismatch = ops.compare(a, b, args.s)
    except PyhvError as err:
        print(f"pyhv img: {err}", file=sys.stderr)
        return 2
    print(mismatch or "Images are identical.")
    return 1 if mismatch else 0


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pyhv img", description="disk image tool with qemu-img's syntax")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)

    p = sub.add_parser("create")
    p.add_argument("-f")
    p.add_argument("-b")
    p.add_argument("-F")
    p.add_argument("-o", action="append")
    p.add_argument("-u", action="store_true")
    p.add_argument("-q", action="store_true")
    p.add_argument("filename")
    p.add_argument("size", nargs="?")
    p.set_defaults(run=cmd_create)

    for name, run in (("info", cmd_info), ("check", cmd_check), ("map", cmd_map)):
        p = sub.add_parser(name)
        p.add_argument("-f")
        p.add_argument("--output", choices=("human", "json"), default="human")
        if name == "info":
            p.add_argument("--backing-chain", action="store_true")
        if name == "check":
            p.add_argument("-r", choices=("leaks", "all"))
        p.add_argument("filename")
        p.set_defaults(run=run)

    p = sub.add_parser("convert")
    for flag in ("-f", "-O", "-B"):
        p.add_argument(flag)
    p.add_argument("-o", action="append")
    for flag in ("-c", "-p", "-q"):
        p.add_argument(flag, action="store_true")
    p.add_argument("source")
    p.add_argument("output")
    p.set_defaults(run=cmd_convert)

    p = sub.add_parser("resize")
    p.add_argument("-f")
    p.add_argument("--shrink", action="store_true")
    p.add_argument("-q", action="store_true")
    p.add_argument("filename")
    p.add_argument("size")
    p.set_defaults(run=cmd_resize)

    p = sub.add_parser("commit")
    p.add_argument("-f")
    p.add_argument("-d", action="store_true")
    p.add_argument("-p", action="store_true")
    p.add_argument("-q", action="store_true")
    p.add_argument("filename")
    p.set_defaults(run=cmd_commit)

    p = sub.add_parser("rebase")
    for flag in ("-f", "-b", "-F"):
        p.add_argument(flag)
    for flag in ("-u", "-p", "-q"):
        p.add_argument(flag, action="store_true")
    p.add_argument("filename")
    p.set_defaults(run=cmd_rebase)

    p = sub.add_parser("compare")
    p.add_argument("-f")
    p.add_argument("-F")
    p.add_argument("-s", action="store_true")
    p.add_argument("-p", action="store_true")
    p.add_argument("-q", action="store_true")
    p.add_argument("first")
    p.add_argument("second")
    p.set_defaults(run=cmd_compare)
    return parser


def main(argv: List[str]) -> int:
    """Run ``pyhv img ARGV``; returns the exit status."""
    # qemu-img accepts "--output json" and "--output=json" alike; argparse does too
    try:
        args = _build_parser().parse_args(argv)
        if not getattr(args, "run", None):
            raise BlockOptionError("pyhv img: give a command: create, info, check, convert, "
                                   "resize, commit, rebase, map, compare")
        return args.run(args)
    except PyhvError as err:
        print(f"pyhv img: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        where = f" '{err.filename}'" if err.filename else ""
        print(f"pyhv img: I/O error{where}: {err.strerror or err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("pyhv img: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
