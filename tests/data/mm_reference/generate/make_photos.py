"""The three photographs of the parity tests, cut from scikit-image's sample images.

usage: python make_photos.py OUT_DIR   (needs scikit-image and Pillow)
- strip.png: coffee.png rows 150..209, columns 200..399 (60 x 200, wide enough that the
  scaled test resize leaves it lower than the sliding window);
- panorama.jpg: chelsea.png rows 60..179, columns 80..359 (120 x 280), JPEG quality 90;
- portrait.jpg: astronaut.png rows 10..265, columns 150..341, halved (128 x 96, upright
  portrait), stored turned a quarter left (96 x 128) with EXIF Orientation 6 ("turn 90
  degrees clockwise to show"), JPEG quality 90: a phone photo taken upright.
scikit-image's notes: coffee (Rachel Michetti) and chelsea (Stefan van der Walt) are CC0;
astronaut (NASA) is in the public domain.
"""

import sys
from pathlib import Path

import skimage.data
from PIL import Image

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
Image.fromarray(skimage.data.coffee()[150:210, 200:400]).save(out / "strip.png")
Image.fromarray(skimage.data.chelsea()[60:180, 80:360]).save(out / "panorama.jpg", quality=90)
upright = Image.fromarray(skimage.data.astronaut()[10:266, 150:342]).reduce(2)  # 128 x 96
exif = Image.Exif()
exif[0x0112] = 6  # Orientation: the stored picture is shown turned 90 degrees clockwise
upright.transpose(Image.Transpose.ROTATE_90).save(
    out / "portrait.jpg", quality=90, exif=exif.tobytes()
)
