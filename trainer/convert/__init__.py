"""Labels in the formats users bring, written as our JSONL, and our JSONL out as COCO JSON:
`automl-images convert`. One module a format:

    automl-images convert coco instances.json --images images --output train.jsonl          # coco.py
    automl-images convert voc annotations --images images --output train.jsonl              # voc.py
    automl-images convert yolo labels/train --images images/train --names data.yaml \\
        --output train.jsonl --task image-instance-segmentation                             # yolo.py
    automl-images convert folders photos --output train.jsonl                               # folders.py
    automl-images convert csv labels.csv --images images --output train.jsonl               # csv_labels.py
    automl-images convert labelstudio export.json --images images --output train.jsonl      # label_studio.py
    automl-images convert cvat annotations.xml --images images --output train.jsonl         # cvat.py
    automl-images convert jsonl train.jsonl --output instances.json                         # to_coco.py
    automl-images convert coco instances.json --images images --output train.jsonl --split 0.2 --seed 7

Each `from_*` reads one format and returns a `Conversion`: the JSONL records and warnings saying
what was changed on the way (`conversion.py` holds what they share). Images are never copied or
moved: `image_url` is the image's path relative to the output file's folder when the image lies
inside it (our JSONL reader refuses relative paths that climb out of their folder), else its
absolute path; `image_details` holds the format (the file's extension, as Azure writes it) and the
size in pixels. image-multi-labeling, from any format, takes each image's set of classes (its
objects', crowd and difficult ones included, and its own); image-classification one class an image.

Bad input (an unknown category or class id, a missing image, a malformed field) is a
`ConversionError` listing each problem with its file, its line or annotation id, and the field.
A box or polygon outside the image by more than a pixel is clipped to it, with a warning (by a pixel
or less it is clipped silently: rounding of pixel coordinates); an object left with no area is
dropped, with a warning. No existing file is overwritten without --overwrite (`output.py`), which
also splits with --split.
"""
from .coco import from_coco
from .command import FORMATS, Options, convert, run_cli
from .conversion import Conversion, ConversionError
from .csv_labels import from_csv
from .cvat import from_cvat
from .folders import from_folders
from .label_studio import from_label_studio
from .output import split_records, write_jsonl
from .to_coco import to_coco
from .voc import from_voc
from .yolo import from_yolo, read_names

__all__ = ["Conversion", "ConversionError", "FORMATS", "Options", "convert", "from_coco", "from_csv", "from_cvat",
           "from_folders", "from_label_studio", "from_voc", "from_yolo", "read_names", "run_cli", "split_records",
           "to_coco", "write_jsonl"]
