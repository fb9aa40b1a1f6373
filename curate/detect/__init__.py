"""Detectors for the human filter: faces (RetinaFace), persons (YOLOX, torchvision), CLIP zero-shot.

Every detector takes a batch of RGB uint8 images of any sizes and returns raw scores and boxes in original
pixel coordinates; deciding what to remove happens elsewhere (`curate.detect.decide`).
"""
