"""One synthetic patient's anatomy parameters: the random draw, and the findings that change the
anatomy itself (Cardiomegaly, Enlarged Cardiomediastinum, Emphysema)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, Mapping

import numpy as np


# ----------------------------------------------------------------------------------------------
# anatomy parameters: one patient, both hemithoraces

_SIGNS = (-1.0, 1.0)  # side 0: image left (patient right), side 1: image right (patient left)


@dataclass(frozen=True)
class _Side:
    sign: float
    a_c: float  # lung ellipse centre, lateral distance from the midline
    r_a: float  # lung ellipse half-width
    v_c: float
    r_v: float
    dome_a: float  # diaphragm: v = dome_v + dome_k * (a - dome_a)^2
    dome_v: float
    dome_k: float
    med: float  # superior mediastinal half-width towards this side
    hilum_a: float
    hilum_v: float
    rib_v0: float  # first posterior rib at the spine
    rib_step: float
    rib_b: float
    rib_c: float
    rib_thick: float
    clav_v: float
    clav_rise: float
    vessel_phase: float
    vessel_n: int

    def dome(self, a):
        return self.dome_v + self.dome_k * (a - self.dome_a) ** 2

    @property
    def a_lat(self) -> float:
        return self.a_c + self.r_a


@dataclass(frozen=True)
class Anatomy:
    rot: float
    shift_u: float
    shift_v: float
    scale: float
    sides: tuple[_Side, _Side]
    body_w: float
    neck_w: float
    shoulder_v: float
    heart_u: float
    heart_v: float
    heart_rl: float  # heart extent towards the image left
    heart_rr: float  # ... and towards the image right
    heart_ry: float
    knob_v: float
    knob_r: float
    spine_w: float
    spine_phase: float
    trachea_w: float
    trachea_u: float
    carina_v: float
    air: float
    markings: float
    mu: float
    lo: float
    hi: float
    gamma: float
    noise: float
    texture_seed: int

    @property
    def thorax_width(self) -> float:
        return self.sides[0].a_lat + self.sides[1].a_lat

    @property
    def heart_width(self) -> float:
        return self.heart_rl + self.heart_rr


_N_ANATOMY_DRAWS = 96


def draw_anatomy(rng: np.random.Generator) -> Anatomy:
    draws = iter(rng.random(_N_ANATOMY_DRAWS).tolist())  # a fixed number of draws

    def U(lo: float, hi: float) -> float:
        return lo + (hi - lo) * next(draws)

    apex = U(0.09, 0.135)
    dome0 = U(0.63, 0.68)
    domes = (dome0, dome0 + U(0.015, 0.045))  # the right hemidiaphragm (image left) is higher
    rib_v0 = U(0.085, 0.11)
    rib_step = U(0.056, 0.064)
    sides = []
    for s, sign in enumerate(_SIGNS):
        r_v = U(0.5, 0.56)
        top = apex + U(-0.01, 0.01)
        sides.append(_Side(
            sign=sign,
            a_c=U(0.19, 0.215), r_a=U(0.18, 0.2), v_c=top + r_v, r_v=r_v,
            dome_a=U(0.16, 0.21), dome_v=domes[s], dome_k=U(1.6, 2.3),
            med=U(0.045, 0.06),
            hilum_a=U(0.08, 0.105), hilum_v=U(0.4, 0.45) - 0.02 * s,
            rib_v0=rib_v0 + U(-0.005, 0.005), rib_step=rib_step, rib_b=U(0.45, 0.55),
            rib_c=U(1.6, 1.9), rib_thick=U(0.022, 0.028),
            clav_v=U(0.15, 0.185), clav_rise=U(0.03, 0.06),
            vessel_phase=U(0.0, 2 * math.pi), vessel_n=int(U(18, 24)),
        ))
    heart_ry = U(0.13, 0.16)
    return Anatomy(
        rot=math.radians(U(-3.0, 3.0)), shift_u=U(-0.02, 0.02), shift_v=U(-0.02, 0.025),
        scale=U(0.95, 1.04),
        sides=(sides[0], sides[1]),
        body_w=U(0.46, 0.5), neck_w=U(0.1, 0.13), shoulder_v=U(0.1, 0.15),
        heart_u=0.5 + U(0.02, 0.04), heart_v=domes[1] - U(0.05, 0.08),
        heart_rl=U(0.1, 0.125), heart_rr=U(0.19, 0.22), heart_ry=heart_ry,
        knob_v=U(0.25, 0.3), knob_r=U(0.025, 0.035),
        spine_w=U(0.034, 0.042), spine_phase=U(0.0, 1.0),
        trachea_w=U(0.014, 0.019), trachea_u=0.5 + U(-0.006, 0.006), carina_v=U(0.3, 0.34),
        air=U(0.63, 0.7), markings=U(0.11, 0.15),
        mu=U(1.1, 1.35), lo=U(0.03, 0.08), hi=U(0.93, 0.99), gamma=U(1.05, 1.35),
        noise=U(0.008, 0.016),
        texture_seed=int(next(draws) * 2**31),
    )


# ----------------------------------------------------------------------------------------------
# findings that change the anatomy: new anatomy from the old one


def cardiomegaly(an: Anatomy, rng: np.random.Generator) -> Anatomy:
    width = rng.uniform(0.55, 0.64) * an.thorax_width  # cardiothoracic ratio > 0.5
    left_share = rng.uniform(0.3, 0.36)
    return replace(an, heart_rl=width * left_share, heart_rr=width * (1 - left_share),
                   heart_ry=an.heart_ry * rng.uniform(1.08, 1.18))


def enlarged_cardiomediastinum(an: Anatomy, rng: np.random.Generator) -> Anatomy:
    f = rng.uniform(1.7, 2.2)
    sides = tuple(replace(sd, med=sd.med * f) for sd in an.sides)
    return replace(an, sides=sides, knob_r=an.knob_r * rng.uniform(1.3, 1.6))


def emphysema(an: Anatomy, rng: np.random.Generator) -> Anatomy:
    drop = rng.uniform(0.05, 0.08)
    flat = rng.uniform(0.15, 0.35)
    grow = rng.uniform(0.005, 0.015)
    sides = tuple(replace(sd, dome_v=sd.dome_v + drop, dome_k=sd.dome_k * flat,
                          r_v=sd.r_v + drop, v_c=sd.v_c + drop, r_a=sd.r_a + grow)
                  for sd in an.sides)
    narrow = rng.uniform(0.8, 0.9)
    return replace(an, sides=sides, air=min(0.9, an.air + rng.uniform(0.08, 0.11)),
                   markings=an.markings * rng.uniform(0.3, 0.5),
                   heart_rl=an.heart_rl * narrow, heart_rr=an.heart_rr * narrow,
                   heart_v=an.heart_v + 0.8 * drop)


MODIFIERS: Mapping[str, Callable[[Anatomy, np.random.Generator], Anatomy]] = {
    "cardiomegaly": cardiomegaly,
    "enlarged_cardiomediastinum": enlarged_cardiomediastinum,
    "emphysema": emphysema,
}
