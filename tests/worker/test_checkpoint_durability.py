"""atomic_dir under faults: an exception, a crash (os._exit) at each rename, and what it fsyncs."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from worker.checkpoint import atomic_dir, checkpoint_folders, prune_checkpoints, recover_leftovers, write_text_atomic

REPO = Path(__file__).resolve().parents[2]


def write_folder(folder: Path, text: str) -> None:
    (folder / "a.txt").write_text(text)
    (folder / "sub").mkdir()
    (folder / "sub" / "b.txt").write_text(text * 2)


def contents(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


def dot_entries(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


OLD = {"a.txt": "old", "sub/b.txt": "oldold"}
NEW = {"a.txt": "new", "sub/b.txt": "newnew"}


@pytest.fixture
def final(tmp_path) -> Path:
    final = tmp_path / "out" / "adapter"
    with atomic_dir(final) as tmp:
        write_folder(tmp, "old")
    return final


def test_replaces_the_folder_and_leaves_nothing_beside_it(final):
    assert contents(final) == OLD
    with atomic_dir(final) as tmp:
        write_folder(tmp, "new")
    assert contents(final) == NEW
    assert dot_entries(final.parent) == []


def test_an_exception_in_the_block_keeps_the_old_folder(final):
    with pytest.raises(RuntimeError), atomic_dir(final) as tmp:
        (tmp / "a.txt").write_text("half")
        raise RuntimeError("disk full")
    assert contents(final) == OLD
    assert dot_entries(final.parent) == []


def test_a_failed_rename_after_moving_the_old_folder_aside_puts_it_back(final, monkeypatch):
    real_rename, calls = os.rename, []

    def rename(src, dst):
        calls.append((Path(src).name, Path(dst).name))
        if len(calls) == 2:  # the first moved the old folder aside; this one would bring the new one in
            raise OSError("simulated failure")
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OSError, match="simulated"), atomic_dir(final) as tmp:
        write_folder(tmp, "new")
    assert calls[0][1].startswith(".adapter.old-") and calls[1][1] == "adapter"
    assert contents(final) == OLD
    assert dot_entries(final.parent) == []


CRASH = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    from worker.checkpoint import atomic_dir

    final, crash_at = Path(sys.argv[1]), sys.argv[2]
    real_rename, renames = os.rename, []

    def rename(src, dst):
        real_rename(src, dst)
        renames.append(dst)
        if crash_at == f"rename{len(renames)}":
            os._exit(3)  # a power cut: no handler, no cleanup runs

    os.rename = rename
    with atomic_dir(final) as tmp:
        (tmp / "a.txt").write_text("new")
        if crash_at == "block":
            os._exit(3)
        (tmp / "sub").mkdir()
        (tmp / "sub" / "b.txt").write_text("newnew")
""")


@pytest.mark.parametrize("crash_at, survivor", [("block", OLD), ("rename1", OLD), ("rename2", NEW)])
def test_a_crash_at_any_point_leaves_the_old_or_the_new_folder(final, crash_at, survivor):
    proc = subprocess.run(
        [sys.executable, "-c", CRASH, str(final), crash_at], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 3, proc.stderr
    assert dot_entries(final.parent), "the crash left its temp or aside folder"
    if crash_at == "rename1":
        # The one gap: the old folder is aside and the new one not yet in. Recovery puts the old one back.
        assert not final.exists()
    else:
        assert contents(final) == survivor
    recover_leftovers(final.parent)
    assert contents(final) == survivor
    assert dot_entries(final.parent) == []


def test_every_file_and_folder_is_fsynced_before_the_rename(final, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(Path(os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with atomic_dir(final) as tmp:
        write_folder(tmp, "new")
    assert set(synced[:-1]) == {tmp / "a.txt", tmp / "sub" / "b.txt", tmp / "sub", tmp}
    assert synced[-1] == final.parent, "the renames are made durable last"


def test_write_text_atomic_replaces_a_file_whole(tmp_path):
    path = tmp_path / "evaluation.json"
    write_text_atomic(path, "one")
    write_text_atomic(path, "two")
    assert path.read_text() == "two" and dot_entries(tmp_path) == []
    assert path.stat().st_mode & 0o777 == 0o644


def test_checkpoint_folders_and_prune_ignore_and_clear_dot_folders(tmp_path):
    root = tmp_path / "checkpoints"
    for step in (2, 4, 6, 8):
        (root / f"step-{step:06d}").mkdir(parents=True)
    (root / ".step-000010.tmp-abc123").mkdir()  # a save cut short
    (root / ".step-000008.old-0f0f0f0f").mkdir()  # a replacement that finished, all but the cleanup
    (root / ".step-000012.old-1a2b3c4d").mkdir()  # a replacement cut short between the renames
    assert [p.name for p in checkpoint_folders(root)] == ["step-000008", "step-000006", "step-000004", "step-000002"]
    prune_checkpoints(root)
    assert sorted(p.name for p in root.iterdir()) == ["step-000008", "step-000012"]


def test_an_optimizer_that_keeps_hyperparameters_as_tensors_checkpoints_and_resumes(tiny_llama, tmp_path):
    """bitsandbytes' 8-bit optimizers (and torch's tensor learning rates) keep tensors in param_groups: the
    checkpoint's JSON holds their numbers and the resumed optimizer steps on as before."""
    import torch

    from worker.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
    from worker.config import TrainConfig
    from worker.modeling import build_peft_model, choose_device, load_base_model

    cfg = TrainConfig(rank=4, alpha=8)
    model, _ = build_peft_model(load_base_model(str(tiny_llama), choose_device("cpu", "fp32"), cfg), cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=torch.tensor(1e-3), betas=(torch.tensor(0.9), torch.tensor(0.99)))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    sum(p.sum() for p in params).backward()
    optimizer.step()
    scheduler.step()
    folder = save_checkpoint(
        tmp_path / "ckpts", step=1, model=model, optimizer=optimizer, scheduler=scheduler, extra={"total_steps": 2}
    )
    ckpt = read_checkpoint(folder)
    lr = ckpt.optimizer["param_groups"][0]["lr"]
    assert isinstance(lr, torch.Tensor) and float(lr) == pytest.approx(1e-3), "a tensor comes back as a tensor"
    fresh = torch.optim.AdamW(params, lr=1e-3)
    load_checkpoint(
        ckpt, model=model, optimizer=fresh, scheduler=torch.optim.lr_scheduler.LambdaLR(fresh, lambda s: 1.0)
    )
    assert float(fresh.state_dict()["state"][0]["step"]) == 1
    assert tuple(fresh.param_groups[0]["betas"]) == pytest.approx((0.9, 0.99))


def test_a_nested_optimizer_state_round_trips(tiny_llama, tmp_path):
    """bitsandbytes 0.50 keeps each parameter's 8-bit state in a nested dict ("__bnb_optimizer_quant_state__":
    state1, qmap1, absmax1 ... as tensors): it comes back nested, tensors as tensors."""
    import torch

    from worker.checkpoint import read_checkpoint, save_checkpoint
    from worker.config import TrainConfig
    from worker.modeling import build_peft_model, choose_device, load_base_model

    cfg = TrainConfig(rank=4, alpha=8)
    model, _ = build_peft_model(load_base_model(str(tiny_llama), choose_device("cpu", "fp32"), cfg), cfg)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    inner = {"state1": torch.arange(6, dtype=torch.uint8), "qmap1": torch.linspace(-1, 1, 4), "blocksize": 256}
    state = {
        "state": {0: {"step": 3, "__bnb_optimizer_quant_state__": inner}},
        "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "params": [0]}],
    }
    folder = save_checkpoint(
        tmp_path / "ckpts",
        step=3,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        extra={},
        optimizer_state=state,
    )
    back = read_checkpoint(folder).optimizer["state"][0]
    assert back["step"] == 3 and back["__bnb_optimizer_quant_state__"]["blocksize"] == 256
    assert torch.equal(back["__bnb_optimizer_quant_state__"]["state1"], inner["state1"])
    assert torch.equal(back["__bnb_optimizer_quant_state__"]["qmap1"], inner["qmap1"])
