"""What a benchmark sweep runs (chapter 6): pairs x domains x K x budgets x temperatures.

:class:`SweepPlan` expands into blocks of :class:`specdec.analysis.BenchmarkConfig` -- one block
per prompt: the baselines, every method and K -- which :func:`specdec.bench.run_sweep` runs;
:func:`plan_for_profile` reads a profile's sweep (:mod:`specdec.profiles`).
"""

from __future__ import annotations

from dataclasses import dataclass

from .analysis import BASELINE, OUR_METHODS, BenchmarkConfig
from .checks import require_int
from .pairs import HF_PEER, _check_pair_name, _drafter_kind
from .sampling import SamplingParams

__all__ = ["SweepPlan", "plan_for_profile"]


@dataclass(frozen=True)
class SweepPlan:
    """What a sweep covers. Each pair runs on ``domains`` (synthetic pairs on random-token
    prompts instead), ``n_prompts`` prompts per domain, every K of ``ks``, every token budget
    and every temperature; each text pair also runs the autoregressive baseline and, with
    ``hf_peers``, the transformers baseline and the transformers speculative method (at the
    temperatures in ``peer_temperatures``: greedy by default, where a peer's output must equal
    ours token for token). Every configuration runs ``n_repeats`` times (:func:`run_sweep`)."""

    pairs: tuple[str, ...]
    domains: tuple[str, ...]
    ks: tuple[int, ...]
    n_prompts: int
    max_new_tokens: tuple[int, ...]
    temperatures: tuple[float, ...] = (0.0,)
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    device: str = "cpu"
    hf_peers: bool = True
    profile: str = ""
    n_repeats: int = 3
    peer_temperatures: tuple[float, ...] = (0.0,)

    def __post_init__(self):
        from .prompts import DOMAINS

        if not self.pairs:
            raise ValueError("a sweep needs at least one pair")
        for pair in self.pairs:
            _check_pair_name(pair)
        for d in self.domains:
            if d not in DOMAINS:
                raise ValueError(f"unknown domain {d!r}; choose from {', '.join(DOMAINS)}")
        if not self.ks or not self.max_new_tokens:
            raise ValueError("a sweep needs at least one K and one token budget")
        for k in self.ks:
            require_int("each of ks", k, 1)
        for m in self.max_new_tokens:
            require_int("each of max_new_tokens", m, 1)
        require_int("n_prompts", self.n_prompts, 1)
        require_int("n_repeats", self.n_repeats, 1)
        for t in self.temperatures:
            SamplingParams(temperature=t, top_k=self.top_k, top_p=self.top_p)

    def methods_for(self, pair: str, temperature: float = 0.0) -> tuple[str, ...]:
        """The methods a pair runs: ours always, plus the transformers peer where there is one."""
        if not self.hf_peers or float(temperature) not in {float(t) for t in self.peer_temperatures}:
            return OUR_METHODS
        peer = HF_PEER[_drafter_kind(pair)]
        return OUR_METHODS + ("hf_autoregressive",) + ((peer,) if peer else ())

    def blocks(self, pair: str, prompt_ids: dict[str, list[str]], dtype: str = "float32") -> list[list[BenchmarkConfig]]:
        """The configurations of ``pair`` in *blocks*: one block per prompt, token budget and
        temperature, holding the baselines and every method and K that run on it (baseline
        first). :func:`run_sweep` runs a block's configurations one after another, ``n_repeats``
        times, so that each one is timed next to its baseline."""
        out = []
        for domain, ids in prompt_ids.items():
            for pid in ids:
                for m in self.max_new_tokens:
                    for t in self.temperatures:
                        common = dict(pair=pair, domain=domain, prompt_id=pid, max_new_tokens=m, temperature=float(t),
                                      top_k=self.top_k, top_p=self.top_p, seed=self.seed, device=self.device, dtype=dtype)
                        block = []
                        for method in self.methods_for(pair, t):
                            for k in ([0] if method in ("autoregressive", "hf_autoregressive") else self.ks):
                                block.append(BenchmarkConfig(method=method, k=k, **common))
                        out.append(block)
        return out

    def configs(self, pair: str, prompt_ids: dict[str, list[str]], dtype: str = "float32") -> list[BenchmarkConfig]:
        """Every configuration of ``pair``, block by block (:meth:`blocks`), each once."""
        return [c for block in self.blocks(pair, prompt_ids, dtype) for c in block]

    def pending(self, pair: str, prompt_ids: dict[str, list[str]], done: set, dtype: str = "float32"):
        """The units of work left: ``(repeat, configs)`` for every repeat of every block that is
        not complete in ``done`` (a set of ``(config hash, repeat)``, :func:`completed_hashes`).
        A unit holds the block's missing configurations *and* their baselines, even where a
        baseline's record exists already: a speedup needs a baseline timed next to it."""
        units = []
        for r in range(self.n_repeats):
            for block in self.blocks(pair, prompt_ids, dtype):
                missing = [c for c in block if (c.config_hash, r) not in done]
                if not missing:
                    continue
                need = {BASELINE[c.method] for c in missing}
                units.append((r, [c for c in block if c in missing or (c.method in need and c.k == 0)]))
        return units


def plan_for_profile(profile=None, which: str = "sweep", **overrides) -> SweepPlan:
    """The plan of a profile's benchmark (:func:`specdec.profiles.get_profile`), with fields
    overridden: ``which="sweep"`` is the profile's whole benchmark (for ``cpu``, the committed
    results file that ``make results`` records), ``which="live"`` the bounded run a chapter
    makes while the book builds. The profile gives the pairs, prompts per domain, tokens per
    prompt, the Ks, the temperatures, the repeats and the device.
    """
    from .profiles import Profile, get_profile
    from .prompts import DOMAINS

    prof = profile if isinstance(profile, Profile) else get_profile(profile)
    if which not in ("sweep", "live"):
        raise ValueError(f"which must be 'sweep' or 'live', got {which!r}")
    sw = getattr(prof, which)
    fields_ = dict(pairs=sw.pairs, domains=DOMAINS, ks=sw.ks, n_prompts=sw.n_prompts,
                   max_new_tokens=(sw.max_new_tokens,), temperatures=sw.temperatures, n_repeats=sw.n_repeats,
                   device=prof.device, profile=prof.name)
    fields_.update(overrides)
    return SweepPlan(**fields_)
