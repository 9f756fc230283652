"""The benchmark cases: the shapes of SPEC §5, a T sweep for the plots, and the CPU cases."""

from __future__ import annotations

from dataclasses import dataclass

# Row ops: name -> (family, causal, with CLS). The family names the public function.
OPS = {
    "temporal": ("temporal", False, False),
    "temporal_causal": ("temporal", True, False),
    "spatial": ("spatial", False, False),
    "spatial_cls": ("spatial", False, True),
    "joint": ("joint", False, False),
    "joint_causal": ("joint", True, False),
    "factorized": ("factorized", False, False),
}

# Layouts of the packed projection ``[B, T, N, 3, H, D]`` the q, k, v views come from:
# "nt" is TimeSformer's patch-major token order, "tn" frame-major.
LAYOUTS = ("nt", "tn")

SWEEP_T = (8, 16, 32, 64, 128, 256)


@dataclass(frozen=True)
class Case:
    op: str
    B: int
    T: int
    N: int  # patches per frame (without the CLS token)
    H: int
    D: int = 64
    layout: str = "nt"
    group: str = "main"  # which SPEC §5 row (or "sweep", "cpu", "interp")

    @property
    def family(self) -> str:
        return OPS[self.op][0]

    @property
    def causal(self) -> bool:
        return OPS[self.op][1]

    @property
    def cls(self) -> bool:
        return OPS[self.op][2]

    @property
    def temporal_heads(self) -> int:
        return self.H // 2

    def label(self) -> str:
        n = f"{self.N}+cls" if self.cls else f"{self.N}"
        return f"{self.op} B{self.B} T{self.T} N{n} H{self.H} D{self.D} {self.layout}"

    def numel(self) -> int:
        """Elements of one of q, k, v, out."""
        return self.B * self.T * self.N * self.H * self.D

    def flops_fwd(self) -> float:
        """4 * B * H * groups * Lq * Lk * D (two matmuls), scaled by the visible fraction."""
        B, T, N, H, D = self.B, self.T, self.N, self.H, self.D
        causal_frac = (T + 1) / (2 * T) if self.causal else 1.0
        if self.family == "temporal":
            return 4.0 * B * H * N * T * T * D * causal_frac
        if self.family == "spatial":
            L = N + 1 if self.cls else N
            return 4.0 * B * H * T * L * L * D
        if self.family == "joint":
            return 4.0 * B * H * (T * N) ** 2 * D * causal_frac
        th = self.temporal_heads
        return 4.0 * B * D * (th * N * T * T + (H - th) * T * N * N)


def gpu_cases() -> list[Case]:
    main = [(8, 8, 196, 12), (2, 16, 784, 12), (1, 32, 196, 12), (2, 16, 4096, 5)]
    cases = []
    for layout in LAYOUTS:
        cases += [Case("temporal", *s, layout=layout, group="temporal") for s in main]
    cases += [Case("temporal_causal", *s, group="temporal_causal") for s in main]
    cases += [Case("temporal", *s, group="long_T") for s in [(1, 96, 196, 12), (1, 256, 64, 12)]]
    cases += [Case("temporal", 2, 8, 196, 8, D=d, group="other_D") for d in (40, 72, 80, 128, 160)]
    for layout in LAYOUTS:
        for op in ("spatial", "spatial_cls"):
            cases += [Case(op, *s, layout=layout, group="spatial") for s in [(8, 8, 196, 12), (2, 16, 784, 12)]]
    for layout in LAYOUTS:
        cases += [Case(op, 2, 8, 196, 12, layout=layout, group="joint") for op in ("joint", "joint_causal")]
    cases += [Case("factorized", *s, group="factorized") for s in [(8, 8, 196, 12), (2, 8, 196, 12)]]
    cases += sweep_cases()
    return cases


def sweep_cases(ts=SWEEP_T) -> list[Case]:
    """Temporal attention at N=196, H=12 for T = 8 ... 256 (B shrinks so the work stays similar)."""
    return [Case("temporal", max(1, 64 // t), t, 196, 12, group="sweep") for t in ts]


def quick_cases() -> list[Case]:
    return [
        Case("temporal", 8, 8, 196, 12, group="temporal"),
        Case("temporal_causal", 8, 8, 196, 12, group="temporal_causal"),
        Case("spatial_cls", 8, 8, 196, 12, group="spatial"),
        Case("joint", 2, 8, 196, 12, group="joint"),
    ] + sweep_cases((8, 64, 256))


def cpu_cases() -> list[Case]:
    """Small float32 cases for a CPU machine: reference and peers timed, interpreter checked."""
    timed = [
        Case("temporal", 2, 8, 24, 4, D=32, group="cpu"),
        Case("temporal_causal", 2, 8, 24, 4, D=32, group="cpu"),
        Case("spatial", 2, 4, 24, 4, D=32, group="cpu"),
        Case("spatial_cls", 2, 4, 24, 4, D=32, group="cpu"),
        Case("joint", 1, 4, 24, 4, D=32, group="cpu"),
        Case("joint_causal", 1, 4, 24, 4, D=32, group="cpu"),
        Case("factorized", 2, 4, 24, 4, D=32, group="cpu"),
    ]
    # The interpreter runs every kernel instance in Python: tiny shapes, odd sizes, D not a power of 2.
    interp = [Case(op, 1, 5, 7, 2, D=24, group="interp") for op in OPS]
    return timed + interp


def select_ops(cases: list[Case], ops: str | None) -> list[Case]:
    """Keep cases whose op is named in ``ops`` ("temporal" also selects "temporal_causal")."""
    if not ops:
        return cases
    wanted = [o.strip() for o in ops.split(",") if o.strip()]
    unknown = [o for o in wanted if not any(op == o or op.startswith(o + "_") for op in OPS)]
    if unknown:
        raise SystemExit(f"--ops: unknown op(s) {unknown}; known: {sorted(OPS)}")
    return [c for c in cases if any(c.op == o or c.op.startswith(o + "_") for o in wanted)]
