"""Minari datasets (Farama's format for offline trajectory data) to and from TrajectoryDatasets.

Optional dependency: ``pip install ddcontrol[minari]``. Nothing is ever downloaded: a dataset is
read from the local Minari store (``MINARI_DATASETS_PATH``, default ``~/.minari/datasets``) or
from a ``MinariDataset`` already in memory.

Mapping. A Minari episode of K steps holds K + 1 observations and K actions. Importing gives
``u`` = actions, ``y`` = the first K observations (each measured before its action, ddcontrol's
convention), and ``x`` = all K + 1 observations (``state_source: "observations"``). Exporting
reverses it: with ``x`` from observations the final observation is ``x[:, T]`` and all T steps
are written; a dataset whose ``x`` is a true state (or absent) has no observation after its
last input, so its episodes are written with T − 1 steps (the last input is dropped). Episodes of
different lengths are cut to the shortest with ``truncate=True`` (else a clear error). Only 1-D
``Box`` observation and action spaces are supported.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from ddcontrol import __version__
from ddcontrol.errors import ConfigurationError, DataFormatError, DimensionError

INSTALL_HINT = "Minari support needs the optional dependency: pip install 'ddcontrol[minari]'"


def _minari() -> Any:
    try:
        import minari
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConfigurationError(INSTALL_HINT) from exc
    return minari


def from_minari(dataset: Any, *, max_episodes: int | None = None, truncate: bool = False,
                dt: float | None = None, input_names: list[str] | None = None,
                output_names: list[str] | None = None) -> Any:
    """A :class:`~ddcontrol.data.TrajectoryDataset` from a Minari dataset.

    Parameters
    ----------
    dataset : str or minari.MinariDataset
        The id of a dataset in the local Minari store (never downloaded), or the dataset.
    max_episodes : int, optional
        Read only the first episodes.
    truncate : bool
        Cut episodes of different lengths to the shortest (else ``DimensionError``).
    dt : float, optional
        Sampling time (default: the recovered env's ``dt`` if the env is installed, else 1.0).
    input_names, output_names : optional
        Channel names (default ``u0 ..``, ``y0 ..``).

    Raises
    ------
    DataFormatError
        Unknown local id, or spaces that are not 1-D ``Box``.
    DimensionError
        Episodes of different lengths without ``truncate``.
    """
    minari = _minari()
    from ddcontrol.data.dataset import TrajectoryDataset

    if isinstance(dataset, str):
        try:
            dataset = minari.load_dataset(dataset, download=False)
        except (FileNotFoundError, ValueError) as exc:
            raise DataFormatError(f"no local Minari dataset {dataset!r} ({exc}); ddcontrol never "
                                  "downloads one") from exc
    import gymnasium as gym

    for what, space in (("action", dataset.action_space),
                        ("observation", dataset.observation_space)):
        if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
            raise DataFormatError(f"Minari dataset {dataset.spec.dataset_id}: the {what} space "
                                  f"must be a 1-D Box, got {space}")
    episodes = list(dataset.iterate_episodes())
    if max_episodes is not None:
        episodes = episodes[:max_episodes]
    if not episodes:
        raise DataFormatError(f"Minari dataset {dataset.spec.dataset_id} has no episodes")
    lengths = [len(ep) for ep in episodes]
    if len(set(lengths)) > 1 and not truncate:
        raise DimensionError(f"ragged lengths: the episodes have {min(lengths)} to "
                             f"{max(lengths)} steps; pass truncate=True to keep the first "
                             f"{min(lengths)} steps of each")
    t = min(lengths)
    if t < 1:
        raise DataFormatError("an episode has no step")
    u = np.stack([np.asarray(ep.actions, dtype=np.float64)[:t] for ep in episodes])
    obs = np.stack([np.asarray(ep.observations, dtype=np.float64)[: t + 1] for ep in episodes])
    spec = dataset.spec
    env_spec = getattr(spec, "env_spec", None)
    env_id = env_spec.id if env_spec is not None else None
    seeds = _episode_seeds(dataset, [ep.id for ep in episodes])
    low = np.asarray(dataset.action_space.low, dtype=np.float64)
    high = np.asarray(dataset.action_space.high, dtype=np.float64)
    if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))):
        low, high = u.min(axis=(0, 1)), u.max(axis=(0, 1))
    m, p = u.shape[2], obs.shape[2]
    if dt is None and env_id is not None:
        dt = _env_dt(env_id)
    meta = {
        "env_id": env_id,
        "env_kwargs": dict(getattr(env_spec, "kwargs", None) or {}) if env_spec else {},
        "simulator": "gymnasium" if env_id is not None and seeds is not None else "none",
        "source": f"minari:{spec.dataset_id}",
        "dt": float(dt) if dt is not None else 1.0,
        "dt_known": dt is not None,
        "input_names": list(input_names or [f"u{j}" for j in range(m)]),
        "output_names": list(output_names or [f"y{j}" for j in range(p)]),
        "state_names": [f"obs{j}" for j in range(p)],
        "state_source": "observations",
        "input_low": low.tolist(),
        "input_high": high.tolist(),
        "episode_seeds": seeds,
        "minari_episode_ids": [int(ep.id) for ep in episodes],
        "ddcontrol_version": __version__,
    }
    meta["env_kwargs"] = {k: v for k, v in meta["env_kwargs"].items()
                          if isinstance(v, (int, float, str, bool, type(None)))}
    return TrajectoryDataset(u=u, y=obs[:, :t], x=obs, metadata=meta)


def _env_dt(env_id: str) -> float | None:
    """``dt`` of the recorded env if it is installed here (nothing is downloaded)."""
    import gymnasium as gym

    try:
        env = gym.make(env_id)
    except Exception:  # noqa: BLE001 - an env that is not installed just gives no dt
        return None
    dt = getattr(env.unwrapped, "dt", None)
    env.close()
    return float(dt) if isinstance(dt, (int, float)) and dt > 0 else None


def _episode_seeds(dataset: Any, ids: list[int]) -> list[int] | None:
    """The reset seed of every episode, or None unless all are recorded."""
    try:
        metas = list(dataset.storage.get_episode_metadata(ids))
    except (AttributeError, KeyError, TypeError, ValueError):
        return None
    seeds = [m.get("seed") for m in metas]
    if len(seeds) != len(ids) or any(s is None for s in seeds):
        return None
    return [int(s) for s in seeds]


def to_minari(data: Any, dataset_id: str, *, author: str | None = None,
              description: str | None = None) -> Any:
    """Write ``data`` into the local Minari store as ``dataset_id`` and return the
    ``MinariDataset`` (actions = ``u``, observations = ``y`` and the final observation; see the
    module docstring for a dataset without one).

    Raises
    ------
    ConfigurationError
        A dataset id that already exists locally, or data too short to export.
    """
    minari = _minari()
    import gymnasium as gym
    from minari.data_collector import EpisodeBuffer

    if dataset_id in minari.list_local_datasets():
        raise ConfigurationError(f"a local Minari dataset {dataset_id!r} exists; delete it with "
                                 "minari.delete_dataset or choose another id")
    meta = data.metadata
    obs_final = meta.get("state_source") == "observations" and data.x.shape[2] == data.output_dim
    steps = data.length if obs_final else data.length - 1
    if steps < 1:
        raise ConfigurationError("a dataset without a final observation needs T >= 2 to export")
    seeds = meta.get("episode_seeds") or [None] * data.num_trajectories
    buffers = []
    for i in range(data.num_trajectories):
        # steps + 1 observations: y and the final one, or (without it) y alone.
        obs = np.concatenate([data.y[i], data.x[i, -1:]]) if obs_final else data.y[i]
        buffers.append(EpisodeBuffer(
            id=i, seed=None if seeds[i] is None else int(seeds[i]), observations=list(obs),
            actions=list(data.u[i, :steps]), rewards=[0.0] * steps,
            terminations=[False] * steps, truncations=[False] * (steps - 1) + [True]))
    low = np.asarray(meta.get("input_low", data.u.min(axis=(0, 1))), dtype=np.float64)
    high = np.asarray(meta.get("input_high", data.u.max(axis=(0, 1))), dtype=np.float64)
    if low.shape != (data.input_dim,) or high.shape != (data.input_dim,):
        raise DimensionError(f"input bounds must have {data.input_dim} entries")
    action_space = gym.spaces.Box(low, high, dtype=np.float64)
    observation_space = gym.spaces.Box(-np.inf, np.inf, (data.output_dim,), dtype=np.float64)
    env = meta.get("env_id") if meta.get("simulator") == "gymnasium" else None
    with warnings.catch_warnings():
        # Minari asks for a code permalink, an e-mail and an eval env: not ours to invent.
        warnings.filterwarnings("ignore", category=UserWarning, module=r"minari\.utils")
        return minari.create_dataset_from_buffers(
            dataset_id, buffers, env=env, action_space=action_space,
            observation_space=observation_space, author=author or "ddcontrol",
            description=description or f"exported by ddcontrol {__version__} from "
            f"{meta.get('source') or meta.get('env_id') or 'a dataset'}",
            algorithm_name=f"excitation: {meta.get('excitation', 'measured')}")
