"""Datasets: excitation signals, collection, windows, normalisation, file format, CLI."""

from __future__ import annotations

import numpy as np
import pytest

from ddcontrol.cli import main
from ddcontrol.data import EXCITATIONS, Normalizer, TrajectoryDataset, collect, get_excitation
from ddcontrol.data.collect import make_dynamics
from ddcontrol.errors import (
    ConfigurationError,
    DataFormatError,
    DimensionError,
    NonFiniteError,
    UnknownNameError,
)


@pytest.mark.parametrize("name", sorted(EXCITATIONS))
def test_excitations_shape_bounds_and_variety(name):
    rng = np.random.default_rng(0)
    low, high = np.array([-10.0, -5.0]), np.array([10.0, 5.0])
    u = get_excitation(name)(rng, 50, 80, low, high)
    assert u.shape == (50, 80, 2)
    assert np.all(u >= low - 1e-12) and np.all(u <= high + 1e-12)
    assert np.all(u.std(axis=(0, 1)) > 0.1 * (high - low) / 2)  # actually excites


def test_unknown_excitation_and_bad_parameters():
    with pytest.raises(UnknownNameError):
        get_excitation("chirp-of-doom")
    with pytest.raises(ConfigurationError):
        collect("ddcontrol/MassSpringDamper-v0", 2, 10, excitation="prbs",
                excitation_params={"levels": 1})
    with pytest.raises(UnknownNameError):
        collect("ddcontrol/MassSpringDamper-v0", 2, 10, excitation="prbs",
                excitation_params={"colour": "red"})


def test_collect_is_deterministic_and_consistent_with_simulator():
    a = collect("ddcontrol/DoublePendulum-v0", 8, 30, seed=5)
    b = collect("ddcontrol/DoublePendulum-v0", 8, 30, seed=5)
    c = collect("ddcontrol/DoublePendulum-v0", 8, 30, seed=6)
    np.testing.assert_array_equal(a.u, b.u)
    np.testing.assert_array_equal(a.y, b.y)
    assert not np.allclose(a.u, c.u)
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
    y, x = make_dynamics("ddcontrol/DoublePendulum-v0").simulate(a.x[:, 0], a.u)
    np.testing.assert_allclose(y, a.y, atol=1e-12)
    np.testing.assert_allclose(x, a.x, atol=1e-12)
    assert a.metadata["env_id"] == "ddcontrol/DoublePendulum-v0"
    assert a.metadata["dt"] == 0.1 and a.metadata["seed"] == 5


def test_collect_progress_bar_path_equals_plain_path():
    a = collect("ddcontrol/CoupledMasses-v0", 4, 45, seed=1, progress=True)
    b = collect("ddcontrol/CoupledMasses-v0", 4, 45, seed=1)
    np.testing.assert_allclose(a.y, b.y, atol=1e-12)
    np.testing.assert_allclose(a.x, b.x, atol=1e-12)


def test_collect_bad_arguments():
    with pytest.raises(UnknownNameError):
        collect("ddcontrol/Nope-v0", 2, 10)
    for n, t in [(0, 10), (-1, 10), (2, 0), (2.5, 10)]:
        with pytest.raises(ConfigurationError):
            collect("ddcontrol/MassSpringDamper-v0", n, t)
    with pytest.raises(DimensionError):
        collect("ddcontrol/MassSpringDamper-v0", 2, 10, initial_states=np.zeros((3, 2)))
    with pytest.raises(NonFiniteError):
        collect("ddcontrol/MassSpringDamper-v0", 2, 10, initial_states=[np.nan, 0.0])


def test_fixed_initial_states_and_env_kwargs():
    d = collect("ddcontrol/Unicycle-v0", 3, 10, initial_states=np.zeros(5),
                env_kwargs={"outputs": ["x", "y"]})
    assert d.output_dim == 2
    np.testing.assert_array_equal(d.x[:, 0], 0.0)


def test_linear_data_is_exactly_linear_behaviour():
    """Windows of an LTI system span a subspace of dimension L*m + n (behavioural systems)."""
    d = collect("ddcontrol/CoupledMasses-v0", 200, 40, seed=0, noise=False)
    L = 12
    w = d.windows(L, stride=3)
    s = np.linalg.svd(w.reshape(len(w), -1), compute_uv=False)
    rank = int(np.sum(s > 1e-8 * s[0]))
    assert rank == L * d.input_dim + d.state_dim


def test_windows_and_initial_conditions_replay():
    d = collect("ddcontrol/Unicycle-v0", 5, 30, seed=2)
    L, stride = 10, 4
    w = d.windows(L, stride)
    x0, u_prev = d.window_initial_conditions(L, stride)
    assert w.shape == (5 * 6, L, 7) and x0.shape == (30, 5) and u_prev.shape == (30, 2)
    y, _ = make_dynamics("ddcontrol/Unicycle-v0").simulate(x0, w[:, :, :2], u_prev=u_prev)
    np.testing.assert_allclose(y, w[:, :, 2:], atol=1e-10)
    with pytest.raises(ConfigurationError):
        d.windows(31)
    with pytest.raises(ConfigurationError):
        d.windows(5, stride=0)


def test_normalizer_roundtrip_numpy_and_torch():
    torch = pytest.importorskip("torch")
    d = collect("ddcontrol/MassSpringDamper-v0", 50, 40, seed=0)
    norm = d.normalizer
    wn = d.windows(20, normalized=True)
    flat = wn.reshape(-1, 2)
    np.testing.assert_allclose(flat.mean(axis=0), 0.0, atol=0.05)
    np.testing.assert_allclose(flat.std(axis=0), 1.0, atol=0.05)
    t = torch.as_tensor(wn)
    np.testing.assert_allclose(norm.denormalize(t).numpy(), d.windows(20), atol=1e-10)
    assert Normalizer.from_dict(norm.to_dict()) .input_dim == 1
    with pytest.raises(DimensionError):
        norm.normalize(np.zeros((3, 5)))


def test_save_load_roundtrip(tmp_path):
    d = collect("ddcontrol/CoupledMasses-v0", 6, 25, seed=3)
    path = d.save(tmp_path / "sub" / "data.npz")
    e = TrajectoryDataset.load(path)
    for k in ("u", "y", "x"):
        np.testing.assert_array_equal(getattr(d, k), getattr(e, k))
    np.testing.assert_array_equal(d.normalizer.std, e.normalizer.std)
    assert e.metadata["env_id"] == "ddcontrol/CoupledMasses-v0"
    assert e.fingerprint() == d.fingerprint()
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_load_rejects_missing_truncated_and_foreign_files(tmp_path):
    with pytest.raises(DataFormatError, match="not found"):
        TrajectoryDataset.load(tmp_path / "missing.npz")
    d = collect("ddcontrol/MassSpringDamper-v0", 4, 20, seed=0)
    path = d.save(tmp_path / "d.npz")
    raw = path.read_bytes()
    (tmp_path / "trunc.npz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataFormatError):
        TrajectoryDataset.load(tmp_path / "trunc.npz")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(DataFormatError):
        TrajectoryDataset.load(tmp_path / "text.npz")
    np.savez(tmp_path / "foreign.npz", a=np.zeros(3))
    with pytest.raises(DataFormatError, match="missing"):
        TrajectoryDataset.load(tmp_path / "foreign.npz")


def test_load_rejects_nan_and_wrong_version(tmp_path):
    import json

    d = collect("ddcontrol/MassSpringDamper-v0", 4, 20, seed=0)
    meta = json.dumps({**d.metadata, "format_version": 1})
    bad_u = d.u.copy()
    bad_u[0, 0, 0] = np.nan
    np.savez(tmp_path / "nan.npz", u=bad_u, y=d.y, x=d.x, norm_mean=d.normalizer.mean,
             norm_std=d.normalizer.std, metadata=np.array(meta))
    with pytest.raises(DataFormatError, match="NaN"):
        TrajectoryDataset.load(tmp_path / "nan.npz")
    meta99 = json.dumps({**d.metadata, "format_version": 99})
    np.savez(tmp_path / "v99.npz", u=d.u, y=d.y, x=d.x, norm_mean=d.normalizer.mean,
             norm_std=d.normalizer.std, metadata=np.array(meta99))
    with pytest.raises(DataFormatError, match="version"):
        TrajectoryDataset.load(tmp_path / "v99.npz")


def test_dataset_validates_shapes():
    with pytest.raises(DimensionError):
        TrajectoryDataset(np.zeros((2, 5, 1)), np.zeros((2, 4, 1)), np.zeros((2, 6, 2)))
    with pytest.raises(DimensionError):
        TrajectoryDataset(np.zeros((2, 5, 1)), np.zeros((2, 5, 1)), np.zeros((2, 5, 2)))


def test_cli_generate(tmp_path, capsys):
    out = tmp_path / "msd.npz"
    rc = main(["generate", "--env", "ddcontrol/MassSpringDamper-v0", "--trajectories", "7",
               "--length", "12", "--out", str(out), "--seed", "4", "--excitation", "prbs",
               "--quiet"])
    assert rc == 0 and "wrote" in capsys.readouterr().out
    d = TrajectoryDataset.load(out)
    assert (d.num_trajectories, d.length) == (7, 12)
    assert d.metadata["excitation"] == "prbs" and d.metadata["seed"] == 4
    assert main(["generate", "--env", "ddcontrol/Nope-v0", "--trajectories", "1",
                 "--length", "3", "--out", str(tmp_path / "x.npz"), "--quiet"]) == 1
