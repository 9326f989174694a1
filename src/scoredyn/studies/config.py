"""Study configurations: ``tiny`` (tests, seconds), ``quick`` (the demo, minutes on a 2-core CPU) and
``full`` (GPU-sized: more data, longer training, more samples, MNIST).

Every stage hashes the part of the configuration it uses (plus its version), so changing one field
reruns only the stages that depend on it. Every random draw comes from a named stream (the
``streams`` field of each study's configuration) and the run's seed. Quick mode is a fixed amount
of work (steps, samples, sizes); nothing depends on how long it takes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Optional

from .._checks import check_positive
from ..train.config import TrainConfig

MODES = ("tiny", "quick", "full")
TOYS = ("moons", "swissroll", "checkerboard", "rings", "gmm2d")
IMAGES = ("digits", "mnist", "cifar10")


@dataclass(frozen=True)
class NetConfig:
    """A small network and how long to train it."""

    arch: str = "mlp"  # "mlp" (flattened input) or "unet"
    hidden: int = 128
    depth: int = 3
    base: int = 32  # UNet base channels
    channel_mult: tuple[int, ...] = (1, 2)  # UNet levels
    num_blocks: int = 1  # UNet residual blocks per level
    batch_size: int = 256
    lr: float = 2e-3
    steps: int = 2000
    ema_decay: float = 0.999

    def train_config(self, **fields: Any) -> TrainConfig:
        """The :class:`~scoredyn.train.TrainConfig` of this network's runs (``fields`` fill in or override)."""
        return TrainConfig(**{"steps": self.steps, "batch_size": self.batch_size, "lr": self.lr, **fields})


# The conv net of every digits study (an MLP does not sample digits well enough for the quality gate:
# multiplicative MLPs FID 216-301 vs a floor of about 22 (Kim); EDM MLPs 42-70 vs 22-32 (teleport);
# EDM MLP with PC 104 vs 20 (smoothing)). Each study sets its own number of steps.
DIGITS_UNET = NetConfig(arch="unet", base=32, channel_mult=(1, 2), num_blocks=1, batch_size=64, lr=1e-3)


@dataclass(frozen=True)
class KimStreams:
    """Kim's named random streams (each one per-sample seeded; see ``common.seeds``)."""

    reduction_starts: int = 1
    exact_starts: int = 2
    net_samples: int = 3
    image_samples: int = 4
    sampler_starts: int = 5
    langevin_noise: int = 6
    exact_langevin_noise: int = 7
    loss_draws: int = 10  # and 11 (the z of the same draws)
    image_loss_draws: int = 12  # and 13
    weighting_starts: int = 14


@dataclass(frozen=True)
class SmoothingStreams:
    """The smoothing study's named random streams."""

    starts: int = 20
    sde_noise: int = 21


@dataclass(frozen=True)
class TeleportStreams:
    """The teleport study's named random streams."""

    skip_starts: int = 30
    uv_probes: int = 31
    gate_starts: int = 32


@dataclass(frozen=True)
class KimConfig:
    """Kim (2026): multiplicative noise conditioning as an autonomous dynamical system."""

    toy: str = "moons"
    n_heldout: int = 2000
    # (1) reductions and (2) the exact optimum f*
    exact_n: int = 12  # training points for f*
    sigma_min: float = 0.02
    sigma_max: float = 3.0
    n_reduction: int = 32  # starting points for the reduction checks
    reduction_rtol: float = 1e-8
    ald_steps_each: int = 3  # noise-free annealed Langevin steps per level for the reduction check
    n_levels: int = 20  # NCSN geometric levels for ALD (reduction and sampling)
    n_exact_samples: int = 128
    traj_steps: int = 100  # least RK4 steps per trajectory of f* (more if h = 1.5 sigma_min needs them)
    fp_grid: int = 14  # Newton starts on a fp_grid x fp_grid grid (all equilibria of f*)
    basin_grid: int = 28  # basin pictures on a basin_grid x basin_grid grid
    # (3) trained multiplicative networks
    train_sizes: tuple[int, ...] = (8, 64, 1024)
    checkpoints: tuple[int, ...] = (300, 1000, 3000)  # training steps at which the net is analysed
    net: NetConfig = field(default_factory=lambda: NetConfig(hidden=128, depth=3, batch_size=256, lr=2e-3))
    net_sigma_min: float = 0.02
    n_net_samples: int = 512
    n_fixed_point_starts: int = 128
    # (3b) the same on images (a digits / MNIST subset); 0 sizes = skipped
    image_data: str = "digits"
    image_sizes: tuple[int, ...] = (32, 512)
    image_checkpoints: tuple[int, ...] = (300, 1000)
    image_net: NetConfig = DIGITS_UNET
    image_sigma_min: float = 0.05
    # (2g) Kim's open question: weightings lambda other than g^2 (the optimum is grad L_lambda / M_lambda)
    weightings: tuple[str, ...] = ("sigma2", "sigma", "sigma3")
    streams: KimStreams = field(default_factory=KimStreams)
    n_image_samples: int = 200
    image_rtol: float = 1e-3  # Dormand-Prince tolerance of the image networks' autonomous-ODE sampler
    n_image_fixed_point_starts: int = 4  # Newton on a conv net's 64-dim field: each iteration costs 64 JVPs per start
    # (4) sampler comparison
    heun_steps: int = 40
    sampler_rtol: float = 1e-4


@dataclass(frozen=True)
class ImageSet:
    """The images an image study works on: the data set, training and held-out sizes, samples per sampler."""

    data: str = "digits"
    n_train: int = 300
    n_heldout: int = 500
    n_samples: int = 300


@dataclass(frozen=True)
class SmoothingConfig(ImageSet):
    """Zhou et al. (2026): noise unconditioning and temperature-smoothed training, sampled with PC."""

    # the trained networks' PC / gate samples (their cost; the empirical score's rows use n_samples)
    n_net_samples: int = 100
    sigma_min: float = 0.01
    heun_steps: int = 30
    fid: bool = True
    n_levels: int = 30  # discrete training levels of the unconditional networks and optima (the paper: 1000)
    pc_steps: int = 100  # predictor-corrector levels (the paper: 1000)
    snr: float = 0.16  # score_sde's CIFAR-10 setting
    sigma_c: float = 10.0  # collapse level; data in [-1, 1]: the paper's T = 5/sigma
    k: int = 10  # neighbours of the tempered target (the paper: 30, 100; 10 on Cat-Caracal)
    variant: str = "paper"  # eq. 10 ("paper") or the released code ("code")
    n_reference_samples: int = 50  # samples of the exact optima (their cost grows with the training set)
    # the sigma-blind networks' parameterisation: "multiplicative" = score f(x) / sigma, the released code's NCSN++
    # (configs/ve/*_ncsnpp.py: conditional=False, scale_by_sigma=True); "unconditional" = score f(x), eq. 9 literally,
    # whose exact optimum PC sampling leaves off the data (docs/studies.md, smoothing)
    blind: str = "multiplicative"
    n_loss_draws: int = 4096  # fixed draws of each network's training law for its objective beside its optimum's
    loss_checkpoints: tuple[int, ...] = (200, 400)  # earlier steps at which the objective is measured (loss curve)
    gamma_ratio: float = 1.05  # gamma_ex's distance ratio C (not stated in the paper)
    gamma_points: int = 8
    domination_sigmas: tuple[float, ...] = (0.05, 0.2, 1.0)
    temperatures: tuple[float, ...] = (1.0, 1e2, 1e4)  # extension: sampling-time tempering of the empirical score
    # the digits conv net, base 16 (a quarter of the cost per step of base 32) for 800 steps: the sigma-blind net passes
    # the gate there (FID 65 vs 2 x floor 44); 200 steps of base 32 did not (docs/studies.md, smoothing)
    net: NetConfig = replace(DIGITS_UNET, base=16, lr=2e-3, steps=800)
    streams: SmoothingStreams = field(default_factory=SmoothingStreams)

    def __post_init__(self) -> None:
        if self.blind not in ("multiplicative", "unconditional"):
            raise ValueError(f"smoothing.blind must be 'multiplicative' or 'unconditional', got {self.blind!r}")
        if self.n_reference_samples > self.n_net_samples:
            raise ValueError(f"smoothing.n_reference_samples ({self.n_reference_samples}) must be <= n_net_samples "
                             f"({self.n_net_samples}): the exact optima are sampled from the first of the networks' seeds")


@dataclass(frozen=True)
class TeleportConfig(ImageSet):
    """Wang & Vastola: the Gaussian structure of learned scores and analytical teleportation."""

    n_train: int = 1200
    n_samples: int = 400
    net: NetConfig = replace(DIGITS_UNET, steps=1024)
    # >= 8 log-spaced checkpoints for "learned early" (the last one is the network of every other claim)
    checkpoints: tuple[int, ...] = (8, 16, 32, 64, 128, 256, 512, 1024)
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    uv_sigmas: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0)
    uv_n: int = 256
    gmm_components: tuple[int, ...] = (2, 10, 50)
    samplers: tuple[str, ...] = ("heun", "dpmpp_2m", "unipc")
    fixed_step_samplers: tuple[str, ...] = ("dpmpp_2m", "unipc")  # the authors' benchmark: steps fixed on [s_min, s_skip]
    nfes: tuple[int, ...] = (10, 20)  # ascending; every skip fraction at the largest, the others unskipped
    skip_fractions: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
    fid: bool = True
    streams: TeleportStreams = field(default_factory=TeleportStreams)


@dataclass(frozen=True)
class StudyConfig:
    """All three studies plus the run-wide settings."""

    mode: str = "quick"
    seed: int = 0
    device: str = "cpu"
    kim: KimConfig = field(default_factory=KimConfig)
    smoothing: SmoothingConfig = field(default_factory=SmoothingConfig)
    teleport: TeleportConfig = field(default_factory=TeleportConfig)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _tiny() -> StudyConfig:
    kim = KimConfig(
        n_heldout=200, exact_n=5, sigma_min=0.05, net_sigma_min=0.05, n_reduction=8, ald_steps_each=2, n_levels=8,
        n_exact_samples=24, traj_steps=60, fp_grid=6, basin_grid=12,
        train_sizes=(8, 64), checkpoints=(30, 90), net=NetConfig(hidden=32, depth=2, batch_size=64, lr=3e-3),
        n_net_samples=48, n_fixed_point_starts=24, image_sizes=(8, 24), image_checkpoints=(20, 40),
        image_net=NetConfig(hidden=32, depth=2, batch_size=8, lr=3e-3), n_image_samples=16, heun_steps=10,
        sampler_rtol=1e-3,
    )
    smoothing = SmoothingConfig(
        n_train=60, n_heldout=60, n_samples=40, n_net_samples=40, heun_steps=8, temperatures=(1.0, 1e4), fid=False, k=5,
        n_levels=8, pc_steps=10, n_reference_samples=16, gamma_points=3, loss_checkpoints=(30,),
        net=NetConfig(hidden=32, depth=2, batch_size=32, lr=2e-3, steps=60),
    )
    teleport = TeleportConfig(
        n_train=120, n_heldout=60, n_samples=40, net=NetConfig(hidden=32, depth=2, batch_size=32, lr=2e-3, steps=60),
        checkpoints=(15, 30, 60), uv_sigmas=(0.1, 1.0, 10.0), uv_n=32, gmm_components=(2, 5),
        samplers=("heun", "dpmpp_2m"), fixed_step_samplers=("dpmpp_2m",), nfes=(6, 8), skip_fractions=(0.0, 0.25),
        fid=False,
    )
    return StudyConfig(mode="tiny", kim=kim, smoothing=smoothing, teleport=teleport)


def _full() -> StudyConfig:
    kim = KimConfig(
        n_heldout=10000, exact_n=32, n_reduction=256, n_exact_samples=1024, traj_steps=1000,
        train_sizes=(8, 32, 128, 512, 4096), checkpoints=(500, 2000, 8000, 30000),
        net=NetConfig(hidden=256, depth=4, batch_size=512, lr=1e-3), n_net_samples=4096,
        n_fixed_point_starts=1024, image_data="mnist", image_sizes=(64, 1024, 10000),
        image_checkpoints=(2000, 10000, 40000),
        image_net=NetConfig(arch="unet", base=64, batch_size=128, lr=2e-4), n_image_samples=1000,
        n_image_fixed_point_starts=8,
        heun_steps=100, sampler_rtol=1e-5,
    )
    # the paper's discretisation (score_sde's VE: N = 1000 training levels = sampling levels, snr 0.16, one corrector
    # step) and K = 30 (its Table 1); a UNet sized for 28 x 28 (28 -> 14 -> 7, two blocks a level); lr 2e-4 and EMA
    # 0.999 as the released configs
    smoothing = SmoothingConfig(
        data="mnist", n_train=2000, n_heldout=5000, n_samples=2000, n_net_samples=2000, heun_steps=40, n_levels=1000,
        pc_steps=1000, snr=0.16, k=30, loss_checkpoints=(5000, 10000, 20000),
        n_reference_samples=500, gamma_points=12, temperatures=(1.0, 1e2, 1e3, 1e4, 1e5),
        net=NetConfig(arch="unet", base=64, channel_mult=(1, 2, 2), num_blocks=2, batch_size=128, lr=2e-4, steps=40000,
                      ema_decay=0.999),
    )
    teleport = TeleportConfig(
        data="mnist", n_train=60000, n_heldout=10000, n_samples=5000,
        net=NetConfig(arch="unet", base=64, channel_mult=(1, 2, 2), num_blocks=2, batch_size=128, lr=2e-4, steps=102400),
        checkpoints=tuple(102400 // 2**k for k in range(9, -1, -1)), uv_n=2048,
        gmm_components=(2, 10, 100), nfes=(10, 20, 35, 50),
    )
    return StudyConfig(mode="full", kim=kim, smoothing=smoothing, teleport=teleport)


def preset(mode: str = "quick") -> StudyConfig:
    """The configuration of a mode: ``tiny``, ``quick`` (default) or ``full``."""
    if mode == "quick":
        return StudyConfig()
    if mode == "tiny":
        return _tiny()
    if mode == "full":
        return _full()
    raise ValueError(f"unknown study mode {mode!r}; expected one of {MODES}")


def with_overrides(
    cfg: StudyConfig, *, data: Optional[str] = None, device: Optional[str] = None, seed: Optional[int] = None
) -> StudyConfig:
    """Apply the command-line overrides. ``data`` names a 2-D toy (Kim's 2-D part) or an image set
    (Kim's image part, smoothing and teleport)."""
    if seed is not None:
        if int(seed) != seed or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed}")
        cfg = replace(cfg, seed=int(seed))
    if device is not None:
        if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
            raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
        cfg = replace(cfg, device=device)
    if data is not None:
        if data in TOYS:
            cfg = replace(cfg, kim=replace(cfg.kim, toy=data))
        elif data in IMAGES:
            cfg = replace(
                cfg,
                kim=replace(cfg.kim, image_data=data),
                smoothing=replace(cfg.smoothing, data=data),
                teleport=replace(cfg.teleport, data=data),
            )
        else:
            raise ValueError(f"unknown data set {data!r}; expected a 2-D toy {TOYS} or an image set {IMAGES}")
    check_positive("kim.sigma_min", cfg.kim.sigma_min)
    return cfg
