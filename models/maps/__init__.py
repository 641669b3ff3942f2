"""Map (mask) methods added to the built-in ones (models/cam.py), one module each. A module here
registers its function, and nothing else names it::

    import numpy as np

    from models.cam import MAP_MAKERS

    @MAP_MAKERS.register("centre")
    def centre(model, images, classes, config) -> np.ndarray:
        '''(N, H, W) maps in [0, 1]: row i is where class classes[i] is on image i.'''

``augment.cam_method: centre`` then selects it; the settings, the JSON Schema and the CLI list it.
"""
