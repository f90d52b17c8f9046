"""SAM 3 through transformers: concept segmentation (a noun phrase or exemplar boxes -> every
instance) and the interactive tracker behind grounded's predictor interface, over one encoding of
each image.

    from grounded.sam3 import load_sam3
    sam3 = load_sam3("facebook/sam3")                       # hub id (the HF cache offline) or folder
    dets = sam3.segment([image], [["dog", "red car"]])[0]  # Detections: boxes, RLE masks, scores, labels
    predictor = sam3.predictor()                            # set_image / predict / predict_many
    fixed = correct_with_clicks(predictor, image, dets, [[120, 80, 0]])   # a click corrects a result

- `load.py`: loading (folder or hub id, gated weights, the tracker sharing the concept model's backbone)
- `model.py`: `Sam3`, the image features and phrase embeddings shared by everything
- `concepts.py`: concept segmentation -> `Detections`
- `predictor.py`: `Sam3Predictor` (SamPredictor's interface over `Sam3TrackerModel`) and click correction
"""

from .concepts import Concept, segment_concepts
from .load import SAM3_HUB_ID, load_sam3
from .model import Sam3
from .predictor import Sam3Predictor, correct_with_clicks, mask_prompt

__all__ = ["Concept", "SAM3_HUB_ID", "Sam3", "Sam3Predictor", "correct_with_clicks", "load_sam3", "mask_prompt",
           "segment_concepts"]
