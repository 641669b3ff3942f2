"""The built-in synthetic chest phantom: chest-X-ray-like images that need nothing from outside.

Every image is a frontal PA film of one synthetic patient, drawn with vectorised numpy in
continuous patient coordinates normalised to [0, 1] (``u`` across, image-left to image-right;
``v`` down), so any size from 32 to 1024 pixels renders the same anatomy. The picture is built
as a map of attenuation ("density": soft tissue ~1, aerated lung ~0.25, bone and metal more)
that is turned into brightness the way a film does it, ``1 - exp(-mu * density)`` followed by a
per-patient window and gamma: bright = dense (bone, fluid), dark = air.

As on a real PA film the patient's left is on the image's RIGHT: the heart bulges to the image
right, the aortic knob and the gastric bubble sit on the image right, and the right
hemidiaphragm (image left) is a little higher than the left one.

Each present finding adds its own density change (a lesion) drawn where it occurs on a frontal
film; three findings change the anatomy itself (Cardiomegaly, Enlarged Cardiomediastinum,
Emphysema) and their change is the difference between the anatomy with and without them. A
finding's ground-truth mask is the set of pixels whose noise-free brightness the finding moves
by more than ``MASK_THRESHOLD`` (on the 0..1 scale), given everything else in the image.

Labels follow the published class frequencies of the vocabulary (``counts`` / ``total``): an
image is normal with probability ``counts["No Finding"] / total``; an abnormal image thresholds a
correlated latent Gaussian (the pairs in ``CO_OCCURRENCE``) whose thresholds are calibrated
once per vocabulary so that every finding's overall frequency matches its published one.

Determinism: image ``i`` of ``phantom_images(seed=s)`` uses only ``np.random.default_rng([s, i])``
(labels, split, anatomy, lesions, noise), so a stream's prefix never depends on its length.
"""

from __future__ import annotations

from tasks.phantom.checks import MAX_SIZE, MIN_SIZE
from tasks.phantom.lesions import LESION_KIND
from tasks.phantom.prevalence import CO_OCCURRENCE, sample_labels
from tasks.phantom.regime import Regime
from tasks.phantom.stream import MASK_THRESHOLD, SPLIT_SHARES, PhantomImage, phantom_images, render

__all__ = [
    "CO_OCCURRENCE",
    "LESION_KIND",
    "MASK_THRESHOLD",
    "MAX_SIZE",
    "MIN_SIZE",
    "PhantomImage",
    "Regime",
    "SPLIT_SHARES",
    "phantom_images",
    "render",
    "sample_labels",
]
