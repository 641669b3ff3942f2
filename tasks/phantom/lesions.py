"""Findings drawn on top of the anatomy, one drawer per finding, each returning a density change
map; and ``LESION_KIND``, which says how every finding of both vocabularies is drawn.

Longer than ~300 lines: one short drawer per finding of both vocabularies (19), each a few
lines; split, they would be a folder of tiny files.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping

import numpy as np

from tasks.phantom.anatomy import MODIFIERS
from tasks.phantom.geometry import (
    F32,
    bump,
    ellipse_distance,
    inside,
    polyline_distance,
    spline,
    sstep,
    value_noise,
)
from tasks.phantom.scene import Scene

# finding name (both vocabularies) -> how it is drawn
LESION_KIND: Mapping[str, str] = {
    "Atelectasis": "atelectasis",
    "Cardiomegaly": "cardiomegaly",
    "Effusion": "effusion",
    "Pleural Effusion": "effusion",
    "Infiltration": "infiltration",
    "Lung Opacity": "lung_opacity",
    "Mass": "mass",
    "Nodule": "nodule",
    "Lung Lesion": "lung_lesion",
    "Pneumonia": "pneumonia",
    "Pneumothorax": "pneumothorax",
    "Consolidation": "consolidation",
    "Edema": "edema",
    "Emphysema": "emphysema",
    "Fibrosis": "fibrosis",
    "Pleural_Thickening": "pleural_thickening",
    "Pleural Other": "pleural_thickening",
    "Hernia": "hernia",
    "Enlarged Cardiomediastinum": "enlarged_cardiomediastinum",
    "Fracture": "fracture",
    "Support Devices": "support_devices",
}


# ----------------------------------------------------------------------------------------------
# findings drawn on top of the anatomy: each returns a density change map


def _blob(scene: Scene, u0: float, v0: float, radius: float, rng: np.random.Generator,
          lobulation: float) -> tuple[np.ndarray, np.ndarray]:
    """(signed distance to a lobulated circle, normalised radius) around (u0, v0)."""
    du, dv = scene.u - u0, scene.v - v0
    r = np.sqrt(du * du + dv * dv)
    phi = np.arctan2(dv, du)
    p = rng.uniform(0.0, 2 * math.pi, size=3)
    wobble = (lobulation * np.cos(3 * phi + p[0]) + 0.6 * lobulation * np.cos(5 * phi + p[1])
              + 0.4 * lobulation * np.cos(2 * phi + p[2]))
    reff = radius * (1.0 + wobble)
    return reff - r, r / reff


def _nodule(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    side = int(rng.integers(2))
    radius = rng.uniform(0.018, 0.03)
    a, v = scene.lung_point(rng, side, margin=radius + 0.01)
    d, rn = _blob(scene, scene.to_u(side, a), v, radius, rng, 0.05)
    return rng.uniform(0.32, 0.45) * inside(d, 0.006) * (1.0 - 0.3 * rn * rn)


def _mass(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    side = int(rng.integers(2))
    radius = rng.uniform(0.045, 0.075)
    a, v = scene.lung_point(rng, side, margin=0.6 * radius)
    d, rn = _blob(scene, scene.to_u(side, a), v, radius, rng, 0.12)
    body = np.sqrt(np.clip(1.0 - np.clip(rn, 0.0, 1.0) ** 2, 0.0, 1.0))
    return rng.uniform(0.45, 0.6) * inside(d, 0.012) * (0.55 + 0.45 * body)


def _lung_lesion(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    return _nodule(scene, rng) if rng.random() < 0.5 else _mass(scene, rng)


def _both_lungs(scene: Scene) -> np.ndarray:
    return scene.lung[0] + scene.lung[1]


def _consolidation(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    side = int(rng.integers(2))
    radius = rng.uniform(0.06, 0.1)
    a, v = scene.lung_point(rng, side, margin=0.03, v_range=(0.3, 1.0))
    u0 = scene.to_u(side, a)
    d, _ = _blob(scene, u0, v, radius, rng, 0.2)
    patch = inside(d, 0.035) * (0.8 + 0.2 * value_noise(rng, 16, scene.u, scene.v))
    # air bronchograms: a few dark branches running towards the hilum
    sd = scene.anat.sides[side]
    hu = scene.to_u(side, sd.hilum_a)
    pts = np.array([[u0 + 0.6 * radius * (1 if side else -1), v + 0.4 * radius],
                    [u0, v], [0.5 * (u0 + hu), 0.5 * (v + sd.hilum_v)]])
    bronch = inside(0.006 - polyline_distance(scene.u, scene.v, pts), 0.005)
    density = rng.uniform(0.48, 0.6)
    return (density * patch - 0.12 * bronch * patch) * scene.lung[side]


def _pneumonia(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """Lobar consolidation: upper lobe (sharp fissure below), middle lobe or lower lobe."""
    lobe = ("upper", "middle", "lower")[int(rng.integers(3))]
    side = 0 if lobe == "middle" else int(rng.integers(2))
    sd = scene.anat.sides[side]
    v, a = scene.v, scene.lateral(side)
    fissure = sd.hilum_v + rng.uniform(-0.04, 0.0)
    if lobe == "upper":
        region = inside(fissure - v, 0.006 if side == 0 else 0.03)
    elif lobe == "middle":
        oblique = sd.a_c + 0.08 - 0.6 * (v - fissure)  # the major fissure runs down-medially
        region = (inside(v - fissure, 0.006) * inside(sd.dome(a) - 0.02 - v, 0.04)
                  * inside(oblique - a, 0.07))
    else:
        top = sd.dome(sd.a_c) - rng.uniform(0.16, 0.24)
        region = inside(v - top, 0.05)
    mottle = 0.8 + 0.2 * value_noise(rng, 12, scene.u, v)
    return rng.uniform(0.45, 0.6) * region * mottle * scene.lung[side]


def _patchy(scene: Scene, rng: np.random.Generator, density: tuple[float, float]) -> np.ndarray:
    """Patchy, ill-defined opacities in one or two zones (Infiltration, Lung Opacity)."""
    envelope = np.zeros_like(scene.u)
    zones = 1 + int(rng.random() < 0.4)
    for _ in range(zones):
        side = int(rng.integers(2))
        a, v0 = scene.lung_point(rng, side, margin=0.02, v_range=(0.25, 1.0))
        radius = rng.uniform(0.1, 0.17)
        du, dv = scene.u - scene.to_u(side, a), scene.v - v0
        envelope = np.maximum(envelope, bump((du * du + dv * dv) / (radius * radius)))
    field = envelope * (0.25 + 0.75 * value_noise(rng, 18, scene.u, scene.v))
    lungs = _both_lungs(scene)
    peak = float((field * lungs).max())
    if peak > 0:
        field = field * (0.9 / peak)
    patches = sstep((field - 0.2) / 0.45)
    return rng.uniform(*density) * patches * lungs


def _infiltration(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    return _patchy(scene, rng, (0.3, 0.42))


def _lung_opacity(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    return _patchy(scene, rng, (0.34, 0.48))


def _edema(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """Bilateral perihilar (bat-wing) haze with a few septal lines at the bases."""
    radius = rng.uniform(0.17, 0.23)
    fluff = 0.7 + 0.3 * value_noise(rng, 10, scene.u, scene.v)
    out = np.zeros_like(scene.u)
    density = rng.uniform(0.26, 0.36)
    for side in (0, 1):
        sd = scene.anat.sides[side]
        a = scene.lateral(side)
        da, dv = a - (sd.hilum_a + 0.03), scene.v - (sd.hilum_v + 0.02)
        haze = bump((da * da) / (radius * radius) + (dv * dv) / ((1.2 * radius) ** 2))
        # Kerley B lines: short horizontal lines at the lateral lung bases
        kv = sd.dome(sd.a_lat - 0.03) - 0.03 - 0.022 * np.arange(4, dtype=F32)[:, None, None]
        kerley = (inside(0.004 - np.abs(scene.v - kv), 0.004)
                  * inside(a - (sd.a_lat - 0.05), 0.01)).sum(axis=0)
        out += scene.lung[side] * (density * haze * fluff + 0.15 * kerley)
    return out


def _atelectasis(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """Basal plate-like (linear) band, or a wedge of collapsed lung pointing at the hilum."""
    side = int(rng.integers(2))
    sd = scene.anat.sides[side]
    a, v = scene.lateral(side), scene.v
    if rng.random() < 0.5:
        am, vm = scene.lung_point(rng, side, margin=0.03, v_range=(sd.dome_v - 0.15, 1.0))
        length = rng.uniform(0.1, 0.16)
        angle = rng.uniform(-0.3, 0.3)
        thick = rng.uniform(0.016, 0.024)
        ca, sa = math.cos(angle), math.sin(angle)
        along = (a - am) * ca + (v - vm) * sa
        across = -(a - am) * sa + (v - vm) * ca
        shape = inside(thick / 2 - np.abs(across), 0.006) * inside(length / 2 - np.abs(along), 0.02)
        return rng.uniform(0.45, 0.6) * shape * scene.lung[side]
    apex_a, apex_v = sd.hilum_a + 0.02, sd.hilum_v + 0.03
    ta, tv = scene.lung_point(rng, side, margin=0.03, v_range=(sd.hilum_v + 0.1, 1.0))
    direction = math.atan2(tv - apex_v, ta - apex_a)
    spread = rng.uniform(0.16, 0.26)
    da, dv = a - apex_a, v - apex_v
    r = np.sqrt(da * da + dv * dv)
    off = np.abs((np.arctan2(dv, da) - direction + math.pi) % (2 * math.pi) - math.pi)
    wedge = inside(spread - off, 0.06) * sstep((r - 0.04) / 0.04)
    return rng.uniform(0.35, 0.5) * wedge * scene.lung[side]


def _fibrosis(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """Reticular (net-like) lines, peripheral and upper zones, usually both lungs."""
    n = value_noise(rng, 18, scene.u, scene.v) + 0.5 * value_noise(rng, 37, scene.u, scene.v)
    g = n * 3.0
    dist = np.abs(g - np.rint(g))
    net = 1.0 - sstep(dist / 0.14)
    both = rng.random() < 0.8
    first = int(rng.integers(2))
    out = np.zeros_like(scene.u)
    density = rng.uniform(0.22, 0.32)
    for side in (0, 1):
        if not both and side != first:
            continue
        sd = scene.anat.sides[side]
        a = scene.lateral(side)
        peripheral = sstep((a - (sd.a_lat - 0.13)) / 0.07)
        upper = sstep(((sd.hilum_v + 0.02) - scene.v) / 0.1)
        out += density * net * np.maximum(peripheral, upper) * scene.lung[side]
    return out


def _pleural_thickening(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """A thin bright band along the lateral chest wall or over the apex."""
    side = int(rng.integers(2))
    sd = scene.anat.sides[side]
    a, v = scene.lateral(side), scene.v
    wall = scene.wall_distance(side)
    width = rng.uniform(0.016, 0.028)
    band = inside(wall + 0.003, 0.004) * inside(width - wall, 0.006)
    if rng.random() < 0.6:
        top = rng.uniform(sd.v_c - 0.7 * sd.r_v, sd.dome_v - 0.2)
        extent = inside(v - top, 0.03) * inside(top + rng.uniform(0.12, 0.22) - v, 0.03)
        extent = extent * sstep((a - sd.a_c) / 0.05)
    else:
        extent = inside((sd.v_c - sd.r_v + rng.uniform(0.06, 0.1)) - v, 0.03)
    extent = extent * inside(sd.dome(a) - v, 0.01)
    return rng.uniform(0.5, 0.7) * band * extent


def _effusion(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """Fluid at a base: blunts the costophrenic angle, meniscus rising along the lateral wall."""
    first = int(rng.integers(2))
    sides = [first] + ([1 - first] if rng.random() < 0.3 else [])
    out = np.zeros_like(scene.u)
    for n_side, side in enumerate(sides):
        sd = scene.anat.sides[side]
        a, v = scene.lateral(side), scene.v
        height = rng.uniform(0.07, 0.18) * (0.6 if n_side else 1.0)
        cp = sd.dome(sd.a_lat)  # costophrenic angle level
        a0 = sd.med + 0.02
        t = np.clip((a - a0) / (sd.a_lat - a0), 0.0, 1.0)
        level = cp - height * (0.35 + 0.65 * t * t)  # meniscus: higher laterally
        fluid = inside(v - level, 0.02) * (0.85 + 0.15 * np.clip((v - level) / 0.05, 0.0, 1.0))
        hemi = scene.hemithorax(side) * (1.0 - 0.7 * scene.heart)
        out += 0.92 * scene.anat.air * scene.thickness * fluid * hemi
    return out


def _pneumothorax(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """Apical/lateral lucency without lung markings, bounded by a thin visceral pleural line."""
    side = int(rng.integers(2))
    sd = scene.anat.sides[side]
    v = scene.v
    depth = rng.uniform(0.03, 0.075)
    wall = scene.wall_distance(side)
    lowest = sd.hilum_v + rng.uniform(0.0, 0.2)
    extent = inside(lowest - v, 0.06)
    lung = scene.lung[side]
    space = inside(depth - wall, 0.004) * extent * lung
    line = inside(0.0045 - np.abs(wall - depth), 0.003) * extent * lung
    an = scene.anat
    lucent = scene.vessels[side] + (0.9 - an.air) * scene.thickness
    return -space * lucent + 0.2 * line


def _hernia(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """Hiatal hernia: a round retrocardiac density at the base with an air-fluid level."""
    an = scene.anat
    u0 = 0.5 + rng.uniform(0.0, 0.05)
    v0 = min(an.sides[0].dome_v, an.sides[1].dome_v) - rng.uniform(0.0, 0.04)
    rx = rng.uniform(0.05, 0.07)
    ry = rx * rng.uniform(0.8, 1.0)
    d = ellipse_distance(scene.u - u0, scene.v - v0, rx, ry)
    sac = inside(d, 0.008)
    level = v0 - rng.uniform(0.0, 0.4) * ry
    gas = sac * inside(level - scene.v, 0.004) * inside(d - 0.008, 0.006)
    return 0.35 * sac - 0.85 * gas


def _fracture(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """A displaced rib fracture: gap and a step in one posterior rib, laterally."""
    side = int(rng.integers(2))
    sd = scene.anat.sides[side]
    k = int(rng.integers(3, 8))
    v0 = sd.rib_v0 + k * sd.rib_step
    a_f = rng.uniform(0.21, 0.32)
    step = rng.uniform(0.6, 1.0) * sd.rib_thick * (1 if rng.random() < 0.5 else -1)
    gap = rng.uniform(0.008, 0.014)
    a = scene.lateral(side)
    beyond = sstep((a - a_f) / 0.004 + 0.5)
    moved_v0 = v0 + step * beyond + rng.uniform(-0.06, 0.06) * np.clip(a - a_f, 0.0, None)
    broken = scene.rib_density(side, moved_v0) * (1.0 - inside(gap / 2 - np.abs(a - a_f), 0.003))
    return broken - scene.rib_density(side, np.full_like(a, v0))


def _support_devices(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """Tubes/lines (bright lines) and a device box (pacemaker/port) with its lead."""
    an = scene.anat
    u, v = scene.u, scene.v
    sd1 = an.sides[1]
    out = np.zeros_like(u)
    if rng.random() < 0.6:  # endotracheal tube ending above the carina
        tip = an.carina_v - rng.uniform(0.03, 0.07)
        pts = spline([(an.trachea_u + 0.012, -0.05), (an.trachea_u + 0.004, 0.1),
                      (an.trachea_u, tip)], 4)
        out += 0.6 * inside(0.008 - polyline_distance(u, v, pts), 0.004)
    else:  # right jugular central line into the superior vena cava
        pts = spline([(0.36, -0.03), (0.43, 0.1), (0.455, 0.2),
                      (0.46, an.carina_v + rng.uniform(0.0, 0.06))], 4)
        out += 0.4 * inside(0.004 - polyline_distance(u, v, pts), 0.004)
    if rng.random() < 0.4:  # nasogastric tube down the oesophagus to the stomach
        stomach_a = sd1.dome_a + 0.02
        sv = sd1.dome(stomach_a) + 0.06
        pts = spline([(0.505, -0.05), (0.51, 0.35), (0.52, sd1.dome_v + 0.02),
                      (0.5 + 0.6 * stomach_a, sv + 0.01), (0.5 + stomach_a, sv)], 4)
        out += 0.35 * inside(0.004 - polyline_distance(u, v, pts), 0.004)
    # device box under the left clavicle; its lead runs medially along the subclavian vein,
    # down the superior vena cava, through the right atrium to the right ventricular apex
    bu, bv = 0.5 + rng.uniform(0.2, 0.27), rng.uniform(0.17, 0.22)
    bw, bh = rng.uniform(0.026, 0.034), rng.uniform(0.018, 0.024)
    box = inside(bw - np.abs(u - bu), 0.004) * inside(bh - np.abs(v - bv), 0.004)
    apex_u = an.heart_u + 0.45 * an.heart_rr
    lead = spline([(bu - bw, bv + 0.005), (0.56, bv + 0.01), (0.47, an.carina_v - 0.02),
                   (0.465, an.heart_v - 0.6 * an.heart_ry), (0.51, an.heart_v - 0.15 * an.heart_ry),
                   (apex_u, an.heart_v - 0.2 * an.heart_ry)], 4)
    wire = inside(0.0035 - polyline_distance(u, v, lead), 0.003)
    out += 1.6 * box + 0.5 * wire * (1.0 - box)
    return out


LESIONS: Mapping[str, Callable[[Scene, np.random.Generator], np.ndarray]] = {
    "atelectasis": _atelectasis,
    "effusion": _effusion,
    "infiltration": _infiltration,
    "lung_opacity": _lung_opacity,
    "mass": _mass,
    "nodule": _nodule,
    "lung_lesion": _lung_lesion,
    "pneumonia": _pneumonia,
    "pneumothorax": _pneumothorax,
    "consolidation": _consolidation,
    "edema": _edema,
    "fibrosis": _fibrosis,
    "pleural_thickening": _pleural_thickening,
    "hernia": _hernia,
    "fracture": _fracture,
    "support_devices": _support_devices,
}

assert set(LESION_KIND.values()) == set(LESIONS) | set(MODIFIERS)
