"""Drawing of the synthetic chest radiographs: anatomy, findings and their masks, as density maps.

Coordinates are normalised: x from -1 (image left, the patient's right on a frontal film) to +1, y from -1 (top)
to +1 (bottom); a side s = -1 is the patient's right lung, s = +1 the left. On the lateral view x runs from
anterior (-1) to posterior (+1). Densities are built in [0, ~1] (air 0, soft tissue 0.5, bone brighter), then
blurred; synthetic.render_study maps them through a per-patient exposure curve and adds quantum noise.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from medssl.synthetic.reports import FINDINGS

_TISSUE, _LUNG_AIR = 0.55, 0.33  # soft-tissue density; density one lung's air takes away on a frontal film


@dataclass(frozen=True)
class Patient:
    """Anatomy and exposure of one synthetic patient (normalised units; see the module docstring)."""

    seed: int          # lung texture (vessel pattern): the same on every film of the patient
    cx: float          # midline
    tw: float          # half the inner thoracic width: lateral lung edges at cx -+ tw
    top: float         # lung apex height
    dome: tuple[float, float]  # hemidiaphragm dome tops (right, left); the right one is higher
    ctr: float         # cardiothoracic ratio
    hh: float          # heart half-height
    wall: float        # chest wall thickness (skin to lung)
    depth: float       # lateral film: half the anteroposterior depth of the chest
    rib_sp: float      # rib spacing
    rib_ph: float      # rib phase
    contrast: float
    offset: float
    gamma: float
    noise: float
    bubble: bool       # gastric air bubble under the left hemidiaphragm


@dataclass(frozen=True)
class _Geometry:
    """Where and how large each finding of a study is (drawn for all six, used for those present), plus jitter."""

    ctr_big: float
    eff: tuple[int, float]                        # side (0 right, 1 left, 2 both), fluid height
    cons: tuple[int, float, float, float, float]  # side, u (medial->lateral), w (front->back), v (apex->base), radius
    nod: tuple[int, float, float, float, float]   # the same for the nodule
    ptx: tuple[int, float]                        # side, gap between chest wall and collapsed lung
    atel: tuple[int, float, float, float, float]  # side, diaphragm elevation, v, tilt, thickness
    jitter: tuple[float, float, float]            # x shift, y shift, scale
    exposure: tuple[float, float, float]          # contrast factor, offset shift, gamma factor
    seed: int


@lru_cache(maxsize=8)
def _pixels(size: int) -> np.ndarray:
    return ((np.arange(size) + 0.5) * 2 / size - 1).astype(np.float32)


@lru_cache(maxsize=8)
def _blur_matrix(size: int, sigma_px: float) -> np.ndarray:
    """(size, size) Gaussian blur as a matrix: blurred = B @ img @ B.T (cheaper than an FFT at these sizes)."""
    i = np.arange(size)
    b = np.exp(-0.5 * ((i[:, None] - i[None, :]) / sigma_px) ** 2)
    return (b / b.sum(1, keepdims=True)).astype(np.float32)


def _smooth_field(rng: np.random.Generator, k: int, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Smooth zero-mean noise (~unit std): a k x k random field through Gaussian kernels at the pixel positions."""
    centres = np.linspace(-1.3, 1.3, k, dtype=np.float32)
    h = float(centres[1] - centres[0])

    def weights(c: np.ndarray) -> np.ndarray:
        w = np.exp(-0.5 * ((c[:, None] - centres[None, :]) / (0.7 * h)) ** 2)
        return w / w.sum(1, keepdims=True)

    return 1.7 * (weights(ys) @ rng.standard_normal((k, k), dtype=np.float32) @ weights(xs).T)


def _ramp(sd: np.ndarray, size: int) -> np.ndarray:
    """Signed distance (normalised units, > 0 inside) -> coverage in [0, 1] with a one-pixel edge."""
    return np.clip(sd * (size / 2) + 0.5, 0.0, 1.0)


def _band(phase: np.ndarray, width: float) -> np.ndarray:
    """Periodic bands (ribs): 1 on a fraction `width` of each period, smooth edges."""
    return np.clip((np.cos(2 * np.pi * phase) - math.cos(math.pi * width)) * 3.0, 0.0, 1.0)


def _ellipse_sd(xs: np.ndarray, ys: np.ndarray, cx: float, cy: float, ax: float, ay: float) -> np.ndarray:
    """Approximate signed distance (> 0 inside) to an axis-aligned ellipse."""
    r = ((xs - cx) / ax)[None, :] ** 2 + ((ys - cy) / ay)[:, None] ** 2
    return (1 - r) * (0.5 * min(ax, ay))


def _heart_widths(ys: np.ndarray | float, heart: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Half-widths left and right of hx at height y: elliptic above the widest row hy, constant below it."""
    hx, hy, w_left, w_right, hh = heart
    t = np.clip((hy - np.asarray(ys, dtype=np.float32)) / hh, 0, 1)
    return w_left * (1 - np.minimum(t / 0.9, 1) ** 3) ** 0.34, w_right * np.sqrt(1 - t ** 2)  # image-left border squarer


def _heart_sd(xs: np.ndarray, ys: np.ndarray, heart: tuple[float, ...]) -> np.ndarray:
    """Signed distance to a heart silhouette, widest at hy; its base is hidden by the diaphragm."""
    left, right = _heart_widths(ys, heart)
    return _region_sd(xs, ys, heart[0] - left, heart[0] + right, heart[1] - heart[4])


def _region_sd(xs: np.ndarray, ys: np.ndarray, left: np.ndarray, right: np.ndarray, top: float) -> np.ndarray:
    """Signed distance (> 0 inside) to the region left(y) < x < right(y), y > top; left, right: (H,)."""
    return np.minimum(np.minimum(xs[None, :] - left[:, None], right[:, None] - xs[None, :]), (ys - top)[:, None])


def _arc(ys: np.ndarray, top: float, bottom: float) -> np.ndarray:
    """0 at the apex, rising along a circular arc to 1 at 80 % of the lung height: a rounded apex."""
    t = np.clip((ys - top) / (0.8 * (bottom - top)), 0, 1)
    return np.sqrt(t * (2 - t))


def _frontal_edges(p: Patient, s: int, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Medial and lateral edge of frontal lung s, as distances from the midline, (H,) each."""
    f, apex = _arc(ys, p.top, p.dome[(s + 1) // 2]), 0.5 * p.tw
    return apex - (apex - 0.08) * f, apex + (p.tw - apex) * f


def _dome_y(p: Patient, s: int, xs: np.ndarray, lift: float) -> np.ndarray:
    """Height of a frontal hemidiaphragm along x: a parabola, lowest at the costophrenic angle."""
    return p.dome[(s + 1) // 2] - lift + 0.22 * ((s * (xs - p.cx) - 0.45 * p.tw) / (0.5 * p.tw)) ** 2


def _heart(p: Patient, ctr: float, lift: float) -> tuple[float, float, float, float, float]:
    """Frontal heart (hx, hy, right-border half-width, left-border half-width, hh); it grows mostly to the left."""
    w0, w = 2 * p.tw * p.ctr, 2 * p.tw * ctr
    widths = 0.36 * w0 + 0.45 * (w - w0), 0.64 * w0 + 0.55 * (w - w0)
    return p.cx + 0.02, p.dome[0] - lift - 0.09, *widths, p.hh * (0.7 + 0.3 * w / w0)


def _lateral_heart(p: Patient, ctr: float) -> tuple[float, float, float, float, float]:
    """Lateral heart: anterior and low; an enlarged heart grows backwards into the retrocardiac space."""
    grow = 2 * p.tw * (ctr - p.ctr)
    hx, hy = p.cx - 0.3 * p.depth, p.dome[1] - 0.04
    return hx, hy, 0.36 * p.depth, 0.42 * p.depth + 0.8 * grow, p.hh * (0.85 + 0.3 * grow)


def _lateral_edges(p: Patient, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Anterior and posterior lung edge on the lateral film (absolute x), (H,) each."""
    f, apex = _arc(ys, p.top + 0.03, max(p.dome)), p.cx + 0.12
    return apex - (apex - p.cx + p.depth - 0.08) * f, apex + (p.cx + p.depth - 0.05 - apex) * f


def _lateral_dome(p: Patient, s: int, xs: np.ndarray, lift: float) -> np.ndarray:
    """Height of a hemidiaphragm on the lateral film: high in front, lowest at the posterior costophrenic sulcus."""
    return p.dome[(s + 1) // 2] - lift - 0.06 + 0.22 * ((xs - p.cx + 0.25 * p.depth) / p.depth) ** 2


def _place(y: float, near: float, far: float, heart_edge: float, t: float) -> float:
    """Distance along a lung row from its near (medial / anterior) edge to the far one, clear of the heart edge."""
    near = min(max(near, heart_edge + 0.05) + 0.03, far - 0.12)
    far -= 0.03
    return near + t * (far - near)


def _frontal_point(p: Patient, s: int, u: float, v: float, heart: tuple[float, ...]) -> tuple[float, float]:
    """(x, y) in frontal lung s: u from medial to lateral, v from apex to base."""
    y = p.top + v * (p.dome[(s + 1) // 2] - p.top)
    med, lat = (float(e[0]) for e in _frontal_edges(p, s, np.array([y])))
    left, right = _heart_widths(y, heart)
    edge = s * (heart[0] - p.cx) + float(right if s > 0 else left)
    return p.cx + s * _place(y, med, lat, edge, u), y


def _lateral_point(p: Patient, s: int, w: float, v: float, heart: tuple[float, ...]) -> tuple[float, float]:
    """(x, y) in the lungs of a lateral film: w from anterior to posterior, v from apex to base."""
    y = p.top + v * (p.dome[(s + 1) // 2] - p.top)
    ant, post = (float(e[0]) for e in _lateral_edges(p, np.array([y])))
    return _place(y, ant, post, heart[0] + float(_heart_widths(y, heart)[1]), w), y


@dataclass(frozen=True)
class _LungGeom:
    """One lung in one view, as the finding painters need it (closures over the patient and the pixel grid)."""

    sd: Callable[[float], np.ndarray]    # pneumothorax gap -> (H, W) signed distance to the (shrunk) outline
    dome: Callable[[float], np.ndarray]  # lift -> (W,) hemidiaphragm height
    point: Callable[[float, float, float], tuple[float, float]]  # (u, w, v) -> (x, y) in the lung
    outward: np.ndarray                  # (W,) -1 at the medial / anterior end, +1 at the lateral / posterior end


def _side(lg: _LungGeom, g: _Geometry, findings: tuple[str, ...], s: int, xs: np.ndarray, ys: np.ndarray,
          size: int, cover: tuple[np.ndarray, np.ndarray], lift: float,
          masks: np.ndarray) -> tuple[np.ndarray, np.ndarray | float, np.ndarray]:
    """Air (H, W) of lung s with its findings, its pneumothorax rim, and extra density; sets the finding masks."""
    X, Y = xs[None, :], ys[:, None]
    sd = lg.sd(0.0)
    lung = _ramp(sd, size) * (0.8 + 0.2 * np.clip(sd / 0.1, 0, 1)) * _ramp(lg.dome(lift)[None, :] - Y, size)
    a = lung * (1 - 0.85 * cover[1])  # lung seen through the heart keeps a little air
    if cover[0] is not cover[1]:  # cardiomegaly: where the large heart covers lung the normal one leaves free
        masks[0] |= lung * (cover[1] - cover[0]) > 0.35
    extra, rim = np.zeros_like(a), 0.0
    if "atelectasis" in findings and g.atel[0] == s:  # volume loss lifts the hemidiaphragm; a plate-like band
        _, elev, v, tilt, th = g.atel
        x0, y0 = lg.point(0.4, 0.55, v)
        band = _ramp(th - np.abs(Y - y0 - tilt * (X - x0)), size) * _ramp(0.22 - np.abs(X - x0), size)
        before, a = a, a * _ramp(lg.dome(lift + elev)[None, :] - Y, size) * (1 - 0.9 * band)
        masks[5] |= before - a > 0.3
    if "pleural_effusion" in findings and g.eff[0] in (2, (s + 1) // 2):  # meniscus: higher at the far wall
        top = lg.dome(lift) - g.eff[1] * (0.25 + 0.75 * ((lg.outward + 1) / 2) ** 1.5)
        before, a = a, a * (1 - np.clip((Y - top[None, :]) / 0.06 + 0.5, 0, 1))
        masks[1] |= before - a > 0.3
    if "consolidation" in findings and g.cons[0] == s:
        _, u, w, v, r = g.cons
        x0, y0 = lg.point(u, w, v)
        d2 = ((xs - x0) / r)[None, :] ** 2 + ((ys - y0) / (0.8 * r))[:, None] ** 2
        blob = np.clip(1.8 * (1 - d2) - 0.1 + 0.6 * _smooth_field(np.random.default_rng(g.seed), 18, xs, ys), 0, 1)
        before, a = a, a * (1 - 0.85 * blob)
        extra += 0.05 * blob * before  # airless lung is a little denser than soft tissue alone
        masks[2] |= before - a > 0.25
    if "nodule" in findings and g.nod[0] == s:
        _, u, w, v, r = g.nod
        x0, y0 = lg.point(u, w, v)
        disc = _ramp(max(r, 2.6 / size) - np.sqrt((X - x0) ** 2 + (Y - y0) ** 2), size)
        extra += 0.12 * disc
        masks[3] |= disc > 0.5
        a = a * (1 - disc)
    if "pneumothorax" in findings and g.ptx[0] == s:  # the lung falls away from the wall: air without markings
        inner = lg.sd(max(g.ptx[1], 3.0 / size))
        rim = lung * (1 - _ramp(inner, size))
        extra += 0.1 * np.clip(1 - np.abs(inner) * size, 0, 1) * lung - 0.07 * rim
        masks[4] |= rim > 0.5
    return a, rim, extra


def _lung_texture(p: Patient, xs: np.ndarray, ys: np.ndarray, hila: list[tuple[float, float]],
                  salt: int) -> np.ndarray:
    """Vessel markings radiating from the hila and fading outwards, over faint parenchymal mottle (H, W).

    Each hilum gets a smooth random profile around the circle; its zero crossings are the vessels, bent a little
    with distance. The pattern comes from the patient's seed, so it is the same on every film of the patient.
    """
    trng = np.random.default_rng(p.seed + salt)
    tex = 0.05 + 0.015 * _smooth_field(trng, 20, xs, ys)
    m = 256
    for hx, hy in hila:
        prof = np.fft.irfft(np.fft.rfft(trng.standard_normal(m)) * np.exp(-0.5 * (np.arange(m // 2 + 1) / 14) ** 2), m)
        prof = (prof / prof.std()).astype(np.float32)
        dx, dy = (xs - hx)[None, :], (ys - hy)[:, None]
        r = np.sqrt(dx * dx + dy * dy) + 1e-3
        turn = float(trng.uniform(-1, 1)) * 24 * r  # vessels curve as they run out
        idx = ((np.arctan2(dy, dx) * (m / (2 * np.pi)) + turn).astype(np.int32)) % m
        vessel = np.clip(1 - np.abs(prof[idx]) * (r / 0.06), 0, 1)  # constant calibre: narrower angle further out
        tex += vessel * 0.22 * np.exp(-r / 0.45) + 0.07 * np.exp(-(r / 0.09) ** 2)  # vessels, hilar shadow
    return tex


def _frontal_bones(p: Patient, xs: np.ndarray, ys: np.ndarray, size: int) -> np.ndarray:
    """Spine, clavicles and ribs (posterior ribs curve down laterally, anterior ones down medially): density (H, W)."""
    u = np.abs(xs - p.cx)
    spine = _ramp(0.065 - u, size)[None, :] * (0.7 + 0.3 * np.cos(2 * np.pi * ys / 0.11))[:, None]
    clav_y = p.top + 0.1 - 0.22 * u + 0.15 * u ** 2
    clav = _ramp(0.028 - np.abs(ys[:, None] - clav_y[None, :]), size) * _ramp(np.minimum(u - 0.06, 0.62 - u), size)
    t = np.minimum(u / p.tw, 1.15)
    rows = _ramp(np.minimum(ys - p.top + 0.08, max(p.dome) + 0.1 - ys), size)
    cage = _ramp(p.tw + 0.04 - u, size)[None, :] * rows[:, None]
    post = _band((ys[:, None] - (0.5 * t ** 2 - 0.2 * t)[None, :]) / p.rib_sp + p.rib_ph, 0.36)
    ant = _band((ys[:, None] + 0.3 * t[None, :]) / (1.3 * p.rib_sp) + p.rib_ph + 0.3, 0.3)
    rim = _ramp(np.minimum(u - p.tw, p.tw + 0.06 - u), size)[None, :] * rows[:, None]  # ribs seen edge-on
    return 0.07 * spine + 0.16 * clav + cage * (0.06 * post + 0.03 * ant) + 0.08 * rim


def _frontal_anatomy(p: Patient, xs: np.ndarray, ys: np.ndarray, size: int, lift: float,
                     heart: tuple[float, ...], cover: np.ndarray) -> np.ndarray:
    """Soft tissue, abdomen, bones, heart and mediastinum (cover), trachea and gastric bubble: density (H, W)."""
    X, Y, hy, hh = xs[None, :], ys[:, None], heart[1], heart[4]
    bw = p.tw + p.wall + 0.2 * np.clip(-0.5 - ys, 0, 0.5) - 0.05 * np.clip(ys - 0.5, 0, None)
    body = _ramp(bw[:, None] - np.abs(X - p.cx), size)
    abd = _ramp(Y - np.minimum(_dome_y(p, -1, xs, lift), _dome_y(p, 1, xs, lift))[None, :], size)
    soft = _TISSUE + 0.1 * np.clip((-0.3 - ys) / 0.6, 0, 1)[:, None] + 0.15 * abd  # shoulders, abdomen
    D = body * (soft + _frontal_bones(p, xs, ys, size)) + 0.15 * cover * (1 - abd)
    D -= 0.1 * _ramp(0.03 - np.abs(X - p.cx - 0.01), size) * _ramp(hy - hh - 0.1 - ys, size)[:, None]  # trachea
    if p.bubble:
        bx = p.cx + 0.45 * p.tw
        by = float(_dome_y(p, 1, np.float32(bx), lift)) + 0.1
        D -= 0.2 * _ramp(_ellipse_sd(xs, ys, bx, by, 0.09, 0.045), size) * body
    return D


def _frontal_lung(p: Patient, s: int, xs: np.ndarray, ys: np.ndarray, big: tuple[float, ...]) -> _LungGeom:
    """Frontal lung s; a pneumothorax gap opens at the lateral wall and the apex."""
    med, lat = _frontal_edges(p, s, ys)
    lo, hi = (p.cx - lat, p.cx - med) if s < 0 else (p.cx + med, p.cx + lat)
    return _LungGeom(
        sd=lambda gap: _region_sd(xs, ys, lo + gap * (s < 0), hi - gap * (s > 0), p.top + 1.3 * gap),
        dome=lambda lift: _dome_y(p, s, xs, lift), point=lambda u, w, v: _frontal_point(p, s, u, v, big),
        outward=np.clip((s * (xs - p.cx) - 0.45 * p.tw) / (0.5 * p.tw), -1, 1.2))


def _frontal(p: Patient, g: _Geometry, findings: tuple[str, ...], xs: np.ndarray, ys: np.ndarray, size: int,
             ap: bool) -> tuple[np.ndarray, np.ndarray]:
    """Density (H, W) and finding masks (6, H, W) of a PA or AP film."""
    lift, mag = (0.04, 1.05) if ap else (0.0, 1.0)  # AP: shallower inspiration, magnified heart
    heart_geo, big = _heart(p, p.ctr * mag, lift), _heart(p, g.ctr_big * mag, lift)
    _, hy, _, _, hh = heart_geo
    heart0 = heart = _ramp(_heart_sd(xs, ys, heart_geo), size)
    if "cardiomegaly" in findings:
        heart = _ramp(_heart_sd(xs, ys, big), size)
    mw = 0.08 + 0.08 * np.clip((ys - hy + hh + 0.3) / 0.3, 0, 1)  # great vessels widen into the heart
    med = _ramp(mw[:, None] - np.abs(xs - p.cx - 0.02)[None, :], size) * _ramp(hy - ys, size)[:, None]
    med = np.maximum(med, _ramp(_ellipse_sd(xs, ys, p.cx + 0.11, hy - hh - 0.03, 0.07, 0.06), size))  # aortic knob
    cover0 = np.maximum(heart0, med)
    cover = cover0 if heart is heart0 else np.maximum(heart, med)
    D = _frontal_anatomy(p, xs, ys, size, lift, heart_geo, cover)
    tex = _lung_texture(p, xs, ys, [(p.cx - 0.17, hy - 0.85 * hh), (p.cx + 0.2, hy - 0.95 * hh)], 0)
    masks = np.zeros((len(FINDINGS), size, size), dtype=bool)
    for s in (-1, 1):
        a, rim, extra = _side(_frontal_lung(p, s, xs, ys, big), g, findings, s, xs, ys, size, (cover0, cover),
                              lift, masks)
        D += a * (tex * (1 - rim) - _LUNG_AIR) + extra
    return D, masks


def _lateral_anatomy(p: Patient, xs: np.ndarray, ys: np.ndarray, size: int) -> np.ndarray:
    """Soft tissue, spine, sternum, trachea, aorta and ribs of a lateral film: density (H, W)."""
    X, Y, c, dep = xs[None, :], ys[:, None], p.cx, p.depth
    front = c - dep - 0.05 - 0.04 * np.clip(ys + 0.2, 0, None) + 0.08 * np.clip(-0.6 - ys, 0, None)
    body = _ramp(np.minimum(X - front[:, None], c + dep + 0.12 - X), size)
    sp = c + dep - 0.22 + 0.05 * (1 - ys ** 2)  # (H,) spine centre: thoracic kyphosis
    vert = _ramp(0.075 - np.abs(X - sp[:, None]), size) * (0.6 + 0.4 * np.cos(2 * np.pi * ys / 0.12))[:, None]
    post_el = _ramp(0.035 - np.abs(X - sp[:, None] - 0.15), size)
    st = c - dep + 0.07 - 0.04 * (ys + 0.5)
    rows = lambda a, b: _ramp(np.minimum(ys - a, b - ys), size)[:, None]  # noqa: E731
    sternum = _ramp(0.022 - np.abs(X - st[:, None]), size) * rows(p.top + 0.12, p.dome[0])
    trachea = _ramp(0.05 - np.abs(X - (c - 0.05 + 0.12 * (ys + 1))[:, None]), size) * rows(-2, p.top + 0.5)
    aorta = _ramp(0.045 - np.abs(X - sp[:, None] + 0.17), size) * rows(p.top + 0.4, p.dome[1])
    ribs = _band((Y - 0.35 * (X - c)) / p.rib_sp + p.rib_ph, 0.3) * _ramp(X - c + 0.1, size) * rows(p.top, p.dome[0])
    soft = _TISSUE + 0.05 + 0.07 * np.clip((-0.3 - ys) / 0.6, 0, 1)[:, None]  # arms and shoulders over the apices
    return body * (soft + 0.04 * ribs) + 0.13 * vert + 0.06 * post_el + 0.08 * sternum - 0.05 * trachea + 0.05 * aorta


def _lateral_lung(p: Patient, s: int, xs: np.ndarray, ys: np.ndarray, big: tuple[float, ...]) -> _LungGeom:
    """Lung s on the lateral film (both overlap); a pneumothorax gap opens in front and at the apex (upright)."""
    ant, post = _lateral_edges(p, ys)
    return _LungGeom(
        sd=lambda gap: _region_sd(xs, ys, ant + gap, post, p.top + 0.03 + 1.3 * gap),
        dome=lambda lift: _lateral_dome(p, s, xs, lift), point=lambda u, w, v: _lateral_point(p, s, w, v, big),
        outward=np.clip((xs - p.cx) / p.depth, -1, 1.2))


def _lateral(p: Patient, g: _Geometry, findings: tuple[str, ...], xs: np.ndarray, ys: np.ndarray, size: int,
             ap: bool) -> tuple[np.ndarray, np.ndarray]:
    """Density (H, W) and finding masks (6, H, W) of a lateral film (anterior to the image left)."""
    _, hy, _, _, hh = heart_geo = _lateral_heart(p, p.ctr)
    heart0 = heart = _ramp(_heart_sd(xs, ys, heart_geo), size)
    big = _lateral_heart(p, g.ctr_big)
    if "cardiomegaly" in findings:
        heart = _ramp(_heart_sd(xs, ys, big), size)
    abd = _ramp(ys[:, None] - _lateral_dome(p, -1, xs, 0.0)[None, :], size)
    D = _lateral_anatomy(p, xs, ys, size) + 0.1 * abd + 0.08 * heart * (1 - abd)
    tex = 0.6 * _lung_texture(p, xs, ys, [(p.cx + 0.02, hy - hh)], 1)  # two lungs overlap: each carries part
    cover = (0.7 * heart0,) * 2 if heart is heart0 else (0.7 * heart0, 0.7 * heart)  # lungs pass beside the heart
    masks = np.zeros((len(FINDINGS), size, size), dtype=bool)
    for s in (-1, 1):
        a, rim, extra = _side(_lateral_lung(p, s, xs, ys, big), g, findings, s, xs, ys, size, cover, 0.0, masks)
        D += a * (tex * (1 - rim) - 0.6 * _LUNG_AIR) + extra
    return D, masks


def film_density(p: Patient, g: _Geometry, findings: tuple[str, ...], view: str,
                 size: int) -> tuple[np.ndarray, np.ndarray]:
    """Blurred density (size, size) float32 and finding masks (6, size, size) bool of one view, before exposure."""
    sx, sy, sc = g.jitter
    xs, ys = (_pixels(size) - sx) / sc, (_pixels(size) - sy) / sc
    draw = _lateral if view == "LATERAL" else _frontal
    density, masks = draw(p, g, findings, xs, ys, size, view == "AP")
    blur = _blur_matrix(size, 0.35 + 0.006 * size)
    return blur @ density.astype(np.float32) @ blur.T, masks
