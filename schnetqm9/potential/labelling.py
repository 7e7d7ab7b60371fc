"""Label structure files with energies and forces (qm.py), resumably, in worker processes.

    python -m schnetqm9.potential.labelling inputs.extxyz --method b3lyp --output labels.extxyz.gz --workers 1
    python -m schnetqm9.potential.labelling inputs.extxyz --method gfn2 --output xtb.extxyz.gz --workers 2

Every input frame that is labelled becomes one frame of the output, extended XYZ that `train.py --data` reads:
the energy (eV) and forces (eV/A) as ASE's calculator results, the input frame's own keys, and the method's every
setting (`qm.Method.settings`), the seconds it took and its SCF cycles. The output is gzip, one gzip member per
frame, appended and flushed to disk as each molecule finishes: a run that is killed loses at most the molecules in
flight, and the same command resumes it (frames already in the output are not computed again; a member that was
being written when the run died is cut off). Frames that cannot be labelled (an element the method lacks, an odd
number of electrons without a spin, an SCF that does not converge) are reported on stderr and in
OUTPUT.skipped.jsonl, so that a resumed run does not try them again, and never written as labels.

A frame's key is its `name` entry when it has one, else 'FILE:INDEX'.
"""
from __future__ import annotations

import gzip
import io
import json
import multiprocessing
import os
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from schnetqm9.cli import Parser, UserError, one_line
from schnetqm9.potential.qm import METHODS, LabelError, Method, check_molecule, compute


@dataclass
class Job:
    key: str
    atoms: object  # ase.Atoms
    charge: int
    spin: int


def frame_key(atoms, path: str, index: int) -> str:
    return str(atoms.info.get("name", f"{Path(path).name}:{index}"))


def read_members(path: Path) -> tuple[list[str], int]:
    """The complete gzip members of `path` as text, and the byte offset where the last complete one ends (a
    member cut off by a kill ends the list)."""
    raw = memoryview(path.read_bytes()) if path.exists() else memoryview(b"")
    texts, offset = [], 0
    while offset < len(raw):
        d = zlib.decompressobj(wbits=31)
        try:
            text = d.decompress(raw[offset:])
        except zlib.error:
            break
        if not d.eof:
            break
        texts.append(text.decode())
        offset = len(raw) - len(d.unused_data)
    return texts, offset


def done_keys(output: Path) -> set[str]:
    """Keys of the frames already labelled in `output` (whose damaged tail, if any, is cut off here)."""
    import ase.io

    texts, end = read_members(output)
    if output.exists() and end < output.stat().st_size:
        print(f"{output}: cutting off an incomplete frame at byte {end} (a run was killed while writing it)",
              file=sys.stderr)
        with open(output, "r+b") as f:
            f.truncate(end)
    return {str(ase.io.read(io.StringIO(t), format="extxyz").info["label_key"]) for t in texts}


def skipped_path(output: Path) -> Path:
    return output.with_name(output.name + ".skipped.jsonl")


def skipped_keys(output: Path) -> set[str]:
    path = skipped_path(output)
    if not path.exists():
        return set()
    return {json.loads(line)["key"] for line in path.read_text().splitlines() if line.strip()}


def append(path: Path, data: bytes) -> None:
    """Append and flush to disk, so that a finished label survives a kill of the run."""
    with open(path, "ab") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def frame_text(atoms, label, method: Method, key: str) -> str:
    """One extended-XYZ frame: the input's keys, the label as calculator results, the settings. An input that was
    itself labelled (another method's file relabelled) keeps none of that method's settings."""
    import ase.io
    from ase.calculators.singlepoint import SinglePointCalculator

    out = atoms.copy()
    out.info = {k: v for k, v in out.info.items() if not str(k).startswith("label_")}
    out.info.update(method.settings())
    out.info.update(label_key=key, label_seconds=round(label.seconds, 3), label_cycles=label.cycles)
    out.calc = SinglePointCalculator(out, energy=label.energy, forces=label.forces)
    buf = io.StringIO()
    ase.io.write(buf, out, format="extxyz")
    return buf.getvalue()


def read_jobs(paths: list[str], charge: int, spin: int) -> Iterator[Job]:
    import ase.io

    for path in paths:
        if not Path(path).is_file():
            raise UserError(f"{path}: no such file")
        try:
            frames = ase.io.read(path, index=":")
        except Exception as err:
            raise UserError(f"{path}: cannot read it as structures ({one_line(err)})") from None
        for i, atoms in enumerate(frames):
            if atoms.pbc.any():
                raise UserError(f"{path} frame {i}: a periodic cell; only molecules are labelled")
            yield Job(frame_key(atoms, path, i), atoms, int(atoms.info.get("charge", charge)),
                      int(atoms.info.get("spin", spin)))


def _work(args: tuple[Job, Method]) -> tuple[Job, str | None, float, str | None]:
    """In a worker process: (job, the output frame or None, seconds, why not or None)."""
    job, method = args
    try:
        label = compute(job.atoms.get_atomic_numbers(), job.atoms.get_positions(), method, job.charge, job.spin)
    except LabelError as err:
        return job, None, 0.0, str(err)
    except Exception as err:  # a crash inside the program: the molecule is reported, the run goes on
        return job, None, 0.0, f"{type(err).__name__}: {one_line(err)}"
    return job, frame_text(job.atoms, label, method, job.key), label.seconds, None


# frames a worker process labels before it is replaced: B3LYP one (minutes each, and a crash or a leak of one SCF
# touches no other), GFN2-xTB many (0.01-0.1 s each, where starting a process costs seconds)
FRAMES_PER_PROCESS = {"pyscf": 1, "tblite": 500}


def run(paths: list[str], output: Path, method: Method, workers: int = 1, limit: int | None = None,
        charge: int = 0, spin: int = 0, threads: int = 1) -> tuple[int, int]:
    """Label the frames of `paths` (the first `limit` of them) not yet in `output`; returns (labelled now, skipped
    now). The frames run in a pool of `workers` processes, each with `threads` OpenMP threads, replaced after
    FRAMES_PER_PROCESS frames of the method's program."""
    from tqdm.auto import tqdm

    jobs = list(read_jobs(paths, charge, spin))[:limit]
    keys = [j.key for j in jobs]
    if len(set(keys)) != len(keys):
        raise UserError("two input frames share a key: give each frame a unique name= entry")
    output.parent.mkdir(parents=True, exist_ok=True)
    done, skipped = done_keys(output), skipped_keys(output)
    todo, refused = [], 0
    for job in jobs:
        if job.key in done or job.key in skipped:
            continue
        reason = check_molecule(job.atoms.get_atomic_numbers(), job.charge, job.spin, method)
        if reason:
            report_skip(output, job, reason)
            refused += 1
        else:
            todo.append(job)
    print(f"{len(jobs)} frames: {len(done)} already labelled in {output}, {len(skipped) + refused} skipped, "
          f"{len(todo)} to label with {method.name} on {workers} process{'es' if workers > 1 else ''}",
          file=sys.stderr)
    labelled, failed = 0, 0
    if not todo:
        return 0, refused
    os.environ["OMP_NUM_THREADS"] = str(threads)  # the workers' PySCF / tblite threads
    os.environ["OPENBLAS_NUM_THREADS"] = str(threads)
    ctx = multiprocessing.get_context("spawn")
    bar = tqdm(total=len(todo), desc=f"Labelling ({method.name})", unit="mol")
    with ctx.Pool(workers, maxtasksperchild=FRAMES_PER_PROCESS[method.program]) as pool:
        for job, text, seconds, reason in pool.imap_unordered(_work, [(j, method) for j in todo]):
            if text is None:
                report_skip(output, job, reason)
                failed += 1
            else:
                append(output, gzip.compress(text.encode()))
                labelled += 1
                bar.set_postfix_str(f"{len(job.atoms)} atoms in {seconds:.0f} s", refresh=False)
            bar.update(1)
    bar.close()
    return labelled, refused + failed


def report_skip(output: Path, job: Job, reason: str) -> None:
    print(f"skipped {job.key} ({job.atoms.get_chemical_formula()}): {reason}", file=sys.stderr)
    append(skipped_path(output), (json.dumps(dict(key=job.key, reason=reason)) + "\n").encode())


def main(argv: list[str] | None = None) -> None:
    p = Parser(description="Label structure files with energies and forces: B3LYP/6-31G(2df,p), QM9's level of "
               "theory (PySCF), or GFN2-xTB (tblite); resumable, in worker processes.")
    p.add_argument("inputs", nargs="+", help="structure files (anything ase.io.read reads; Angstrom)")
    p.add_argument("--output", type=Path, required=True, help="the labelled frames, gzipped extended XYZ "
                   "(appended to: the same command resumes a run)")
    p.add_argument("--method", choices=sorted(METHODS), default="b3lyp", help="b3lyp: B3LYP/6-31G(2df,p) with "
                   "density fitting, spherical shells; b3lyp-cart: the same with Cartesian shells; gfn2: GFN2-xTB")
    p.add_argument("--workers", type=int, default=1, help="molecules computed at once, each in its own process "
                   "(B3LYP: a fresh process per molecule; GFN2-xTB: a process labels "
                   f"{FRAMES_PER_PROCESS['tblite']} before it is replaced)")
    p.add_argument("--threads", type=int, default=1, help="OpenMP threads per process")
    p.add_argument("--limit", type=int, help="label only the first this many input frames")
    p.add_argument("--charge", type=int, default=0, help="net charge of frames without a charge= entry")
    p.add_argument("--spin", type=int, default=0, help="unpaired electrons (2S) of frames without a spin= entry")
    args = p.parse_args(argv)
    try:
        if args.workers <= 0 or args.threads <= 0 or (args.limit is not None and args.limit <= 0):
            raise UserError("--workers, --threads and --limit must be positive")
        if not str(args.output).endswith(".gz"):
            raise UserError(f"--output {args.output}: name it *.extxyz.gz (the frames are written gzipped)")
        _, skipped = run(args.inputs, args.output, METHODS[args.method], args.workers, args.limit, args.charge,
                         args.spin, args.threads)
    except UserError as err:
        sys.exit(f"error: {err}")
    if skipped:
        sys.exit(f"{skipped} frames could not be labelled: see {skipped_path(args.output)}")


if __name__ == "__main__":
    main()
