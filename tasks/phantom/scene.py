"""The scene: one patient's anatomy drawn as a density map on the pixel grid, the film model that
turns density into brightness, and the geometry lesions are placed with."""

from __future__ import annotations

import math

import numpy as np

from tasks.phantom.anatomy import Anatomy
from tasks.phantom.geometry import (
    F32,
    bump,
    ellipse_distance,
    inside,
    lattice_noise,
    pixel_grid,
    polyline_distance,
    sstep,
    value_noise,
)


# ----------------------------------------------------------------------------------------------
# the scene: coordinates, anatomy density and the pieces lesions need

_EDGE = 0.006  # anatomy edge softness (normalised units)


class Scene:
    def __init__(self, size: int, anat: Anatomy):
        self.size = size
        self.anat = anat
        x, y = pixel_grid(size)
        c, s = math.cos(anat.rot), math.sin(anat.rot)
        dx, dy = x - 0.5, y - 0.5
        self.u = (0.5 + (c * dx + s * dy) / anat.scale - anat.shift_u).astype(F32)
        self.v = (0.5 + (-s * dx + c * dy) / anat.scale - anat.shift_v).astype(F32)
        self.du = self.u - 0.5
        self.lung: list[np.ndarray] = []
        self.vessels: list[np.ndarray] = []
        self.density = self._build()

    # -- geometry ------------------------------------------------------------------------------
    def lateral(self, side: int) -> np.ndarray:
        """Distance from the midline towards ``side`` (negative on the other side)."""
        return self.anat.sides[side].sign * self.du

    def heart_mask(self) -> np.ndarray:
        an = self.anat
        hu = self.u - an.heart_u
        rx = np.where(hu < 0, F32(an.heart_rl), F32(an.heart_rr))
        return inside(ellipse_distance(hu, self.v - an.heart_v, rx, an.heart_ry), _EDGE)

    def medial_limit(self, side: int) -> np.ndarray:
        sd = self.anat.sides[side]
        lim = sd.med + 0.01 * np.clip((self.v - 0.2) / 0.3, 0.0, 1.0)
        if side == 1:  # aortic knob on the patient's left
            lim = lim + self.anat.knob_r * bump(((self.v - self.anat.knob_v) / 0.045) ** 2)
        return lim

    def hemithorax(self, side: int) -> np.ndarray:
        """Lung space of one side before the heart is cut out (soft mask)."""
        sd = self.anat.sides[side]
        a = self.lateral(side)
        d_ell = ellipse_distance(a - sd.a_c, self.v - sd.v_c, sd.r_a, sd.r_v)
        d_dome = sd.dome(a) - self.v
        d_med = a - self.medial_limit(side)
        return inside(np.minimum(np.minimum(d_ell, d_dome), d_med), _EDGE)

    def wall_distance(self, side: int) -> np.ndarray:
        sd = self.anat.sides[side]
        return ellipse_distance(self.lateral(side) - sd.a_c, self.v - sd.v_c, sd.r_a, sd.r_v)

    def inside_lung_point(self, side: int, a: float, v: float, margin: float) -> bool:
        """Whether the point (lateral a, v) lies in the visible lung of ``side``, with a margin."""
        an = self.anat
        sd = an.sides[side]
        e = ((a - sd.a_c) / (sd.r_a - margin)) ** 2 + ((v - sd.v_c) / (sd.r_v - margin)) ** 2
        if e >= 1.0 or v > sd.dome(a) - margin or a < sd.med + 0.01 + margin:
            return False
        u = 0.5 + sd.sign * a
        hu = u - an.heart_u
        rx = (an.heart_rl if hu < 0 else an.heart_rr) + margin
        return (hu / rx) ** 2 + ((v - an.heart_v) / (an.heart_ry + margin)) ** 2 >= 1.0

    def lung_point(self, rng: np.random.Generator, side: int, margin: float,
                   v_range: tuple[float, float] = (0.0, 1.0)) -> tuple[float, float]:
        """A random point in the visible lung of ``side`` (lateral a, v)."""
        sd = self.anat.sides[side]
        for _ in range(60):
            a = rng.uniform(sd.a_c - sd.r_a, sd.a_lat)
            v = rng.uniform(max(sd.v_c - sd.r_v, v_range[0]), min(sd.dome_v + 0.08, v_range[1]))
            if self.inside_lung_point(side, a, v, margin):
                return a, v
        return sd.a_c + 0.06, sd.v_c - 0.25 * sd.r_v

    def to_u(self, side: int, a: float) -> float:
        return 0.5 + self.anat.sides[side].sign * a

    def brightness(self, density: np.ndarray) -> np.ndarray:
        an = self.anat
        film = 1.0 - np.exp(-an.mu * density)
        return np.clip((film - an.lo) / (an.hi - an.lo), 0.0, 1.0) ** an.gamma

    # -- anatomy -------------------------------------------------------------------------------
    def rib_density(self, side: int, v0) -> np.ndarray:
        """Posterior ribs of ``side`` starting at the spine at heights ``v0`` (R, 1, 1) or map."""
        sd = self.anat.sides[side]
        a = self.lateral(side)
        v = self.v
        # upper ribs are tighter arcs, lower ribs flatter and more oblique
        curve = sd.rib_c * (1.25 - 0.5 * np.clip((v0 - sd.rib_v0) / (9 * sd.rib_step), 0.0, 1.0))
        centre = v0 - sd.rib_b * a + curve * a * a
        dist = np.abs(v - centre)
        half = sd.rib_thick / 2
        band = inside(half - dist, 0.006)
        cortex = inside(0.0045 - np.abs(dist - half + 0.003), 0.004)
        envelope = (inside(ellipse_distance(a - sd.a_c, v - sd.v_c, sd.r_a + 0.03, sd.r_v + 0.05),
                           0.02)
                    * sstep((a - 0.03) / 0.05))
        return (0.1 * band + 0.035 * cortex) * envelope

    def _build(self) -> np.ndarray:
        """The anatomy's density map: soft tissue and aerated lungs, then, in this order, what
        lies over them (each step adds to the map in place, so the sums stay the same)."""
        t = self._soft_tissue()
        density = self._aerated_chest(t)
        self._add_abdomen(density, t)
        self._add_spine(density)
        self._add_airways(density, t)
        for side in (0, 1):
            self._add_ribs(density, side)
            self._add_shoulder(density, side)
        self._add_lung_markings(density)
        return density.astype(F32)

    def _soft_tissue(self) -> np.ndarray:
        """Body outline and soft-tissue thickness (thicker in the middle); sets ``thickness``."""
        an = self.anat
        v, du = self.v, self.du
        half = an.neck_w + (an.body_w - an.neck_w) * sstep((v + 0.02) / an.shoulder_v)
        half = half - 0.03 * np.clip(v - 0.75, 0.0, 1.0)
        thick = np.sqrt(np.clip(1.0 - (du / half) ** 2, 0.0, 1.0)) ** 0.5
        body = inside(half - np.abs(du), 0.01)
        t = (thick * body).astype(F32)
        self.thickness = t
        return t

    def _aerated_chest(self, t: np.ndarray) -> np.ndarray:
        """Soft tissue ``t`` less the air of both lungs, plus the heart; sets ``heart`` and
        ``lung`` (one soft mask per side, the heart cut out)."""
        an = self.anat
        v = self.v
        heart = self.heart_mask()
        self.heart = heart
        lungs = np.zeros_like(self.u)  # air thickness: lung masks weighted by the lungs' depth
        self.lung = []
        for side in (0, 1):
            sd = an.sides[side]
            lung = self.hemithorax(side) * (1.0 - heart)
            self.lung.append(lung)
            e2 = ((self.lateral(side) - sd.a_c) / sd.r_a) ** 2 + ((v - sd.v_c) / sd.r_v) ** 2
            lungs += lung * (0.55 + 0.45 * np.sqrt(np.clip(1.0 - e2, 0.0, 1.0)))
        # aerated lung is darkest in its middle: apices (soft tissue of the neck and shoulders)
        # and bases (breasts, posterior recesses) lie under more tissue
        overlay = (0.1 * sstep((v - 0.45) / 0.35) + 0.12 * sstep((0.22 - v) / 0.12))
        above = 1.0 - inside(v - an.sides[1].dome(self.lateral(1)), 0.03)
        return t * (1.0 - an.air * lungs * (1.0 - overlay)) + 0.12 * heart * above * t

    def _add_abdomen(self, density: np.ndarray, t: np.ndarray) -> None:
        """Abdomen below the domes (liver under the right dome), gastric bubble under the left."""
        an = self.anat
        v = self.v
        for side in (0, 1):
            sd = an.sides[side]
            a = self.lateral(side)
            below = inside(v - sd.dome(a), 0.012) * sstep(a / 0.02 + 0.5)
            density += (0.1 if side == 0 else 0.05) * below * t
        sd1 = an.sides[1]
        gb_a = sd1.dome_a + 0.01
        gb_v = sd1.dome(gb_a) + 0.035
        bubble = inside(ellipse_distance(self.lateral(1) - gb_a, v - gb_v, 0.05, 0.024), 0.012)
        bubble *= inside((gb_v + 0.006) - v, 0.004)  # gas on top of a flat fluid level
        density -= 0.32 * bubble * t

    def _add_spine(self, density: np.ndarray) -> None:
        """Vertebral bodies with disc spaces, pedicles, visible through the mediastinum."""
        an = self.anat
        adu = np.abs(self.du)
        spine = inside(an.spine_w - adu, 0.008)
        period = 0.058
        phase = (self.v / period + an.spine_phase) % 1.0
        vert = sstep(np.abs(phase - 0.5) * -8.0 + 3.6)  # 1 inside a body, 0 in a disc space
        pedicle = bump(((adu - 0.65 * an.spine_w) / 0.011) ** 2 + ((phase - 0.32) / 0.14) ** 2)
        density += spine * (0.12 + 0.07 * vert) + 0.08 * pedicle * spine

    def _add_airways(self, density: np.ndarray, t: np.ndarray) -> None:
        """Trachea and main bronchi (air: darker)."""
        an = self.anat
        u, v = self.u, self.v
        tr = inside(an.trachea_w - np.abs(u - an.trachea_u), 0.006)
        tr *= inside(an.carina_v - v, 0.01)
        bronchi = 0.0
        for side in (0, 1):
            sd = an.sides[side]
            pts = np.array([[an.trachea_u, an.carina_v - 0.005],
                            [0.5 + sd.sign * 0.07, an.carina_v + 0.055 + 0.01 * side]])
            bronchi = bronchi + inside(0.008 - polyline_distance(u, v, pts), 0.006)
        density -= 0.22 * np.clip(tr + bronchi, 0.0, 1.0) * t

    def _add_ribs(self, density: np.ndarray, side: int) -> None:
        """Ribs of ``side``: posterior (curved arcs from the spine) and anterior (faint,
        descending medially)."""
        sd = self.anat.sides[side]
        v = self.v
        a = self.lateral(side)
        k = np.arange(10, dtype=F32)[:, None, None]  # ten posterior ribs
        v0 = sd.rib_v0 + k * sd.rib_step
        density += self.rib_density(side, v0).sum(axis=0)
        # anterior ribs: lateral at v1, descending medially with slope ~0.45
        ka = np.arange(6, dtype=F32)[:, None, None]
        v1 = sd.rib_v0 + 0.06 + ka * (sd.rib_step * 1.05)
        centre = v1 + 0.45 * (sd.a_lat - a) - 0.8 * (sd.a_lat - a) ** 2
        ant = inside(0.012 - np.abs(v - centre), 0.008)
        ant_env = sstep((a - 0.1) / 0.06) * inside(sd.a_lat + 0.01 - a, 0.02)
        density += 0.05 * (ant * ant_env).sum(axis=0)

    def _add_shoulder(self, density: np.ndarray, side: int) -> None:
        """Clavicle, humeral head and the lateral border of the scapula of ``side``."""
        an = self.anat
        sd = an.sides[side]
        v = self.v
        a = self.lateral(side)
        # clavicle: medial end near the manubrium, lateral end higher
        ca = np.clip(a - 0.035, 0.0, None)
        centre = sd.clav_v - sd.clav_rise * (ca / 0.27) + 0.012 * np.sin(ca / 0.27 * 2 * math.pi)
        clav = inside(0.013 + 0.004 * (0.3 - a) / 0.3 - np.abs(v - centre), 0.006)
        clav *= sstep((a - 0.035) / 0.02) * inside(0.31 - a, 0.02)
        clav_cortex = inside(0.004 - np.abs(np.abs(v - centre) - 0.009), 0.004)
        density += (0.2 * clav + 0.08 * clav_cortex * (clav > 0))
        # humeral head in the upper outer corner
        head = inside(ellipse_distance(a - (an.body_w + 0.05), v - 0.15, 0.075, 0.09), 0.015)
        density += 0.25 * head
        # lateral border of the scapula: a faint oblique line over the outer upper lung
        sc_c = 0.36 - 0.28 * (v - 0.15)
        scap = inside(0.01 - np.abs(a - sc_c), 0.008) * inside(0.42 - v, 0.06)
        scap *= inside(v - 0.14, 0.02)
        density += 0.05 * scap

    def _add_lung_markings(self, density: np.ndarray) -> None:
        """Vessels radiating from the hila, tapering outwards, and hilar shadows; sets ``vessels``
        (one map per side)."""
        an = self.anat
        u, v = self.u, self.v
        texture_rng = np.random.default_rng(an.texture_seed)
        self.vessels = []
        # streaks elongated along rays from the hilum: value noise on a (angle, radius) lattice
        tex = value_noise(texture_rng, 9, u, v)
        warp = value_noise(texture_rng, 6, u, v)
        for side in (0, 1):
            sd = an.sides[side]
            a = self.lateral(side)
            da, dv = a - sd.hilum_a, v - sd.hilum_v
            r = np.sqrt(da * da + dv * dv) + 1e-4
            theta = (np.arctan2(dv, da) + math.pi) / (2 * math.pi)  # 0..1
            streak = lattice_noise(texture_rng, sd.vessel_n * 2, 6,
                                   theta * (sd.vessel_n * 2) + 1.5 * warp, r * 12.0)
            fine = lattice_noise(texture_rng, sd.vessel_n * 4, 10,
                                 theta * (sd.vessel_n * 4) + 3.0 * warp, r * 25.0)
            cut = 0.52 + 0.18 * np.clip(r / 0.35, 0.0, 1.0)  # vessels taper outwards
            lines = sstep((streak - cut) / 0.12) + 0.6 * sstep((fine - cut - 0.04) / 0.1)
            fade = (1.0 - sstep((r - 0.06) / 0.34)) * sstep((r - 0.035) / 0.05)
            hilum = bump((da / 0.055) ** 2 + (dv / 0.08) ** 2)
            vessels = self.lung[side] * (an.markings * lines * fade
                                         + 0.14 * hilum + 0.06 * (tex - 0.5))
            self.vessels.append(vessels)
            density += vessels
