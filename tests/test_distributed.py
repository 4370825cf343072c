"""Training with DistributedDataParallel: two gloo ranks on the loopback interface (CPU), the
processes launched with torch.multiprocessing, plain subprocesses (as SLURM's srun starts them)
or ``python -m torch.distributed.run`` (torchrun); every test is bounded in time."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

import medseg
from medseg.architectures import UNet
from medseg.losses import CrossEntropyLoss, DiceLoss, RegionDiceLoss, SensitivitySpecificityLoss
from medseg.preprocessing.cache import PreprocessedCases
from medseg.sampling import PatchSampler, PatchStream, create_augmentation
from medseg.training import TrainingConfig, load_checkpoint, train
from medseg.training import distributed as dist_module
from medseg.training.distributed import World, local_batch
from tests.conftest import write_disk_folder

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 30  # seconds every collective of these runs waits at most (MEDSEG_DIST_TIMEOUT)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _loopback_env(port: int, **more: object) -> dict[str, str]:
    """The environment of a rank: loopback only, one thread, a bounded collective timeout."""
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "GLOO_SOCKET_IFNAME": "lo",
           "OMP_NUM_THREADS": "1", "MEDSEG_DIST_TIMEOUT": str(TIMEOUT),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.update({k: str(v) for k, v in more.items()})
    return env


def _join(rank: int, size: int, port: int) -> None:
    os.environ.update(_loopback_env(port, RANK=rank, WORLD_SIZE=size, LOCAL_RANK=rank))
    torch.set_num_threads(1)


def _spawn(target, *args) -> None:
    """Run ``target(rank, *args)`` on two ranks; an error in either fails the test."""
    context = mp.start_processes(target, args=args, nprocs=2, join=False, start_method="spawn")
    deadline = time.monotonic() + 300
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the two ranks did not finish within 300 s")


@pytest.fixture(scope="module")
def disks(tmp_path_factory):
    root = tmp_path_factory.mktemp("disks")
    write_disk_folder(root, 10, seed=0, digits=2)
    return root


@pytest.fixture(scope="module")
def cache(disks, tmp_path_factory):
    """The cases preprocessed once, here (the ranks find them cached instead of each paying again)."""
    folder = tmp_path_factory.mktemp("cache")
    pipe = medseg.Pipeline(str(disks), architecture=UNet(2, 1, 2, features=(4, 8)),
                           sampler=PatchSampler(patch_size=(32, 32)), device="cpu")
    PreprocessedCases(pipe.data, pipe.preprocessing, cache_dir=folder, workers=1).build()
    return folder


# -- one DDP step is one step on the global batch --------------------------------------------------

def _global_batch() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    image = torch.randn(4, 1, 16, 16, generator=generator)
    label = (image[:, 0] + 0.5 * torch.randn(4, 16, 16, generator=generator) > 0.3).long()
    return {"image": image, "label": label}


def _network_and_loss():
    torch.manual_seed(0)
    return UNet(2, 1, 2, features=(4, 8)), DiceLoss(batch=True) + CrossEntropyLoss()


_STEP = TrainingConfig(epochs=1, iterations_per_epoch=1, optimizer="sgd", learning_rate=0.1, amp=False, workers=0)


def _ddp_step(rank: int, folder: str) -> None:
    world, device = dist_module.setup("cpu")
    network, loss = _network_and_loss()
    share = {k: v[2 * rank: 2 * rank + 2] for k, v in _global_batch().items()}  # this rank's half
    train(network, loss, iter([share]), config=_STEP, device=device)
    torch.save(network.state_dict(), Path(folder) / f"rank{rank}.pt")


def _batch_losses():
    """The batch losses with sums to synchronise, beside Dice: region Dice, sensitivity-specificity."""
    return {"region_dice": (RegionDiceLoss(regions=[(1,)], batch=True), 1),  # (loss, logit channels)
            "sens_spec": (SensitivitySpecificityLoss(r=0.3, batch=True, include_background=False), 2)}


def _synced_losses(rank: int, folder: str) -> None:
    """Each rank's synchronised loss on its half of the global batch, and its logits' gradient."""
    generator = torch.Generator().manual_seed(2)
    every = torch.randn(4, 2, 8, 8, generator=generator)[2 * rank: 2 * rank + 2]
    target = _global_batch()["label"][:, :8, :8][2 * rank: 2 * rank + 2]
    results = {}
    for name, (loss, channels) in _batch_losses().items():
        loss.sync = True
        logits = every[:, :channels].clone().requires_grad_()
        value = loss(logits, target)
        value.backward()
        results[name] = (value.detach(), logits.grad.clone())
    torch.save(results, Path(folder) / f"losses{rank}.pt")


def _ranks(rank: int, port: int, data: str, folder: str, cache: str) -> None:
    """What the two ranks of the first run do (one launch: each start costs seconds): one DDP
    step, the synchronised batch losses, then a two-epoch Pipeline.fit."""
    _join(rank, 2, port)
    _ddp_step(rank, folder)
    _synced_losses(rank, folder)
    _fit(rank, port, data, str(Path(folder) / "run"), cache, 2, False)


@pytest.fixture(scope="module")
def first_run(disks, cache, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ranks")
    _spawn(_ranks, _free_port(), str(disks), str(folder), str(cache))
    return folder


def test_one_ddp_step_equals_one_step_on_the_union_of_the_ranks_batches(first_run):
    network, loss = _network_and_loss()
    before = {k: v.clone() for k, v in network.state_dict().items()}
    train(network, loss, iter([_global_batch()]), config=_STEP, device="cpu")
    # what DDP would give if each rank's batch Dice were not synchronised: the mean of the two halves' gradients
    local, local_loss = _network_and_loss()
    halves = [{k: v[i: i + 2] for k, v in _global_batch().items()} for i in (0, 2)]
    sum(local_loss(local(h["image"]), h["label"]) for h in halves).div(2).backward()
    single = network.state_dict()
    for rank in (0, 1):
        ddp = torch.load(first_run / f"rank{rank}.pt", weights_only=True)
        for name, value in single.items():
            torch.testing.assert_close(ddp[name], value, atol=1e-5, rtol=0)
    moved = max(float((single[k] - before[k]).abs().max()) for k in single)
    assert moved > 1e-3  # the step changed the weights far beyond the tolerance
    union_grad = [p.grad for p in _grad_on(_global_batch())]
    gap = max(float((p.grad - g).abs().max()) for p, g in zip(local.parameters(), union_grad, strict=True))
    assert gap > 1e-4  # the unsynchronised batch Dice would have given another step


def test_synced_region_and_sensitivity_losses_are_the_global_batch_losses(first_run):
    generator = torch.Generator().manual_seed(2)
    every = torch.randn(4, 2, 8, 8, generator=generator)
    target = _global_batch()["label"][:, :8, :8]
    for name, (loss, channels) in _batch_losses().items():
        logits = every[:, :channels].clone().requires_grad_()
        whole = loss(logits, target)
        whole.backward()
        halves = [loss(logits.detach()[i: i + 2], target[i: i + 2]) for i in (0, 2)]
        assert abs(float(halves[0]) - float(whole)) > 1e-4  # a half alone gives another loss
        for rank in (0, 1):
            value, grad = torch.load(first_run / f"losses{rank}.pt", weights_only=True)[name]
            torch.testing.assert_close(value, whole.detach(), atol=1e-6, rtol=0)
            # every rank's loss is the global one, so each rank's logits get both ranks' share;
            # DDP then divides the summed parameter gradients by the 2 ranks
            torch.testing.assert_close(grad, 2 * logits.grad[2 * rank: 2 * rank + 2], atol=1e-6, rtol=0)


def _grad_on(batch):
    network, loss = _network_and_loss()
    loss(network(batch["image"]), batch["label"]).backward()
    return list(network.parameters())


# -- Pipeline.fit on two ranks: own patches, one writer, validation split, resume --------------------

def _fit(rank: int, port: int, data: str, out: str, cache: str, epochs: int, resume: bool) -> None:
    _join(rank, 2, port)
    run = Path(out)
    writes: list[str] = []

    def audit(event: str, args: tuple) -> None:  # every file this process opens for writing in the run folder
        if event == "open" and isinstance(args[0], (str, os.PathLike)) and str(args[0]).startswith(out):
            mode, flags = args[1], args[2]
            if (mode and any(c in str(mode) for c in "wax+")) or (flags or 0) & (os.O_WRONLY | os.O_RDWR):
                writes.append(Path(args[0]).name)
        if event == "os.rename" and str(args[1]).startswith(out):
            writes.append(Path(args[1]).name)

    sys.addaudithook(audit)
    from medseg.training import trainer

    elapsed = trainer._Clock.elapsed
    if rank == 1:  # rank 1's own clock says the time limit is long past: rank 0's decides
        trainer._Clock.elapsed = lambda self: time.monotonic() - self.began + 1e7
    pipe = medseg.Pipeline(data, architecture=UNet(2, 1, 2, features=(4, 8)), sampler=PatchSampler(patch_size=(32, 32)),
                           plan={"batch_size": 4}, device="cpu", cache_dir=cache,
                           training=TrainingConfig(workers=0, seed=0, iterations_per_epoch=2, time_limit=1e6))
    first, scored = [], []
    pipe.network.register_forward_pre_hook(lambda m, x: first.append(x[0].sum().item()) if m.training else None)
    predict = pipe.predict_probabilities
    pipe.predict_probabilities = lambda image: scored.append(1) or predict(image)
    history = pipe.fit(epochs=epochs, output_dir=out, resume=resume)
    record = {"history": [{k: h[k] for k in ("epoch", "loss", "val_dice", "steps")} for h in history],
              "first": first[:1], "writes": sorted(set(writes)), "scored": len(scored)}
    Path(run.parent / f"rank{rank}-{epochs}.json").write_text(json.dumps(record))
    trainer._Clock.elapsed = elapsed


def test_two_ranks_fit_their_own_patches_write_once_and_resume(disks, cache, first_run):
    tmp_path, out = first_run, str(first_run / "run")
    ranks = [json.loads((tmp_path / f"rank{r}-2.json").read_text()) for r in (0, 1)]
    assert ranks[0]["first"] != ranks[1]["first"]  # each rank its own patches
    assert ranks[1]["writes"] == []  # only rank 0 writes
    assert {"checkpoint.pt", "pipeline.json", "log.csv", "model.pt"} <= set(ranks[0]["writes"])
    assert ranks[0]["history"] == ranks[1]["history"]  # reduced loss, gathered Dice, same stop step
    assert [h["steps"] for h in ranks[0]["history"]] == [2, 2]  # rank 1's clock did not end its run
    # 2 validation cases scored twice (2 epochs) and once more for the postprocessing choice: once each
    assert ranks[0]["scored"] == ranks[1]["scored"] == 3
    saved = json.loads((tmp_path / "run" / "pipeline.json").read_text())
    assert saved["plan"]["batch_size"] == 4 and len(saved["history"]) == 2

    _spawn(_fit, _free_port(), str(disks), out, str(cache), 3, True)
    resumed = [json.loads((tmp_path / f"rank{r}-3.json").read_text()) for r in (0, 1)]
    for rank in (0, 1):
        assert resumed[rank]["history"][:2] == ranks[0]["history"]
        assert [h["epoch"] for h in resumed[rank]["history"]] == [1, 2, 3]
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["epoch"] == 3


# -- the command line: torchrun, and a rank killed mid-run ---------------------------------------------

def test_torchrun_medseg_train_writes_one_run_and_one_progress_bar(disks, cache, tmp_path):
    logs = tmp_path / "logs"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
               "--master-port", str(_free_port()), "--log-dir", str(logs), "--redirects", "3",
               "-m", "medseg", "train", str(disks), "--out", str(tmp_path / "run"), "--epochs", "1",
               "--iterations-per-epoch", "2", "--workers", "0", "--device", "cpu", "--batch-size", "4",
               "--patch-size", "32,32", "--cache-dir", str(cache)]
    done = subprocess.run(command, env=_loopback_env(0), cwd=tmp_path, capture_output=True, timeout=120,
                          encoding="utf-8", errors="replace")
    assert done.returncode == 0, done.stderr[-2000:]
    assert {p.name for p in (tmp_path / "run").iterdir()} >= {"checkpoint.pt", "pipeline.json", "model.pt", "log.csv"}
    errors = {p.parent.name: p.read_text(encoding="utf-8", errors="replace") for p in logs.rglob("stderr.log")}
    outputs = {p.parent.name: p.read_text(encoding="utf-8", errors="replace") for p in logs.rglob("stdout.log")}
    assert "training" in errors["0"] and "training" not in errors["1"]
    assert "saved to" in outputs["0"] and outputs["1"] == ""


def test_a_killed_rank_ends_the_other_with_an_error_and_keeps_the_checkpoint(disks, cache, tmp_path):
    run, port = tmp_path / "run", _free_port()
    command = [sys.executable, "-m", "medseg", "train", str(disks), "--out", str(run), "--epochs", "500",
               "--iterations-per-epoch", "2", "--workers", "0", "--device", "cpu", "--batch-size", "4",
               "--patch-size", "32,32", "--cache-dir", str(cache)]
    ranks = [subprocess.Popen(command, env=_loopback_env(port, RANK=r, WORLD_SIZE=2, LOCAL_RANK=r), cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, encoding="utf-8", errors="replace")
             for r in (0, 1)]
    try:
        deadline = time.monotonic() + 90
        while not (run / "checkpoint.pt").is_file():
            assert time.monotonic() < deadline and ranks[0].poll() is None, "no checkpoint within 90 s"
            time.sleep(0.2)
        ranks[1].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        _, stderr = ranks[0].communicate(timeout=TIMEOUT + 30)
        waited = time.monotonic() - killed
    finally:
        for process in ranks:
            if process.poll() is None:
                process.kill()
    assert ranks[0].returncode == 2 and waited < TIMEOUT + 30
    assert "another process of the distributed run failed or did not answer" in stderr
    assert "rerun with --resume" in stderr
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] >= 1  # intact


# -- pieces, in one process ----------------------------------------------------------------------------

def test_each_rank_draws_its_own_patches_with_the_foreground_share_and_rank_0_is_one_process(disks, cache):
    pipe = medseg.Pipeline(str(disks), architecture=UNet(2, 1, 2, features=(4, 8)), cache_dir=cache,
                           sampler=PatchSampler(patch_size=(32, 32)), device="cpu")
    cases, ids = pipe.preprocessed_cases().build(), pipe.data.case_ids

    def stream(**kwargs):
        sampler, centred = PatchSampler(patch_size=(24, 24), foreground_ratio=1 / 3), []
        draw = sampler.draw_start

        def counted(*args, **options):
            start, on_foreground = draw(*args, **options)
            centred.append(on_foreground)
            return start, on_foreground

        sampler.draw_start = counted
        return PatchStream(cases, ids, sampler, batch_size=3, augmentation=create_augmentation("none"), seed=5,
                           **kwargs), centred

    (single, _), (zero, fg0), (first, fg1) = stream(), stream(rank=0), stream(rank=1)
    for index in range(4):
        torch.testing.assert_close(zero.batch(index)["image"], single.batch(index)["image"])
        assert not torch.equal(zero.batch(index)["image"], first.batch(index)["image"])
    # one patch in three centred on foreground, per rank and per batch
    for centred in (fg0, fg1):
        assert [sum(centred[i:i + 3]) for i in range(0, len(centred), 3)] == [1] * (len(centred) // 3)


def test_the_global_batch_splits_evenly_or_the_error_says_what_to_give():
    assert local_batch(8, World(rank=1, size=2)) == 4 and local_batch(2, World()) == 2
    with pytest.raises(ValueError, match=r"batch_size 5 does not split over 2 processes; give --batch-size 4 or 6"):
        local_batch(5, World(rank=0, size=2))
    with pytest.raises(ValueError, match=r"--batch-size 4 or 8"):
        local_batch(2, World(rank=0, size=4))


def test_one_process_is_left_as_it_is():
    values = torch.tensor([1.0, 2.0], requires_grad=True)
    assert dist_module.all_reduce_sum(values) is values
    assert dist_module.decided(3.5) == 3.5 and dist_module.sum_values(1.0, 2.0) == [1.0, 2.0]
    assert dist_module.gather_shards([0.1, 0.2], World()) == [0.1, 0.2]
    assert dist_module.current_world() == World() and not dist_module.joined()
    logits, target = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
    synced = DiceLoss(batch=True)
    synced.sync = True
    torch.testing.assert_close(synced(logits, target), DiceLoss(batch=True)(logits, target))


def test_a_bad_timeout_names_the_variable(monkeypatch):
    monkeypatch.setenv("MEDSEG_DIST_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="MEDSEG_DIST_TIMEOUT='soon'"):
        dist_module.timeout_seconds()
    monkeypatch.setenv("MEDSEG_DIST_TIMEOUT", "45")
    assert dist_module.timeout_seconds() == 45.0


# -- GPU: one NCCL rank (NCCL refuses two ranks on one GPU) --------------------------------------------

@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_one_nccl_rank_trains_a_ddp_step_with_sync_batch_norm(monkeypatch):
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    torch.distributed.init_process_group("nccl", rank=0, world_size=1, device_id=torch.device("cuda", 0))
    try:
        torch.manual_seed(0)
        network = UNet(2, 1, 2, features=(4, 8), norm="batch")
        reference = UNet(2, 1, 2, features=(4, 8), norm="batch")
        reference.load_state_dict(network.state_dict())
        batch = _global_batch()
        config = TrainingConfig(epochs=1, iterations_per_epoch=1, optimizer="sgd", learning_rate=0.1, amp=False)
        train(network, DiceLoss(batch=True) + CrossEntropyLoss(), iter([batch]), config=config, device="cuda:0")
        assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in network.modules())
    finally:
        torch.distributed.destroy_process_group()
    train(reference, DiceLoss(batch=True) + CrossEntropyLoss(), iter([batch]), config=config, device="cuda:0")
    for name, value in reference.state_dict().items():
        torch.testing.assert_close(network.state_dict()[name], value, atol=1e-5, rtol=1e-5)
    assert np.isfinite(float(sum(p.sum() for p in network.parameters())))
