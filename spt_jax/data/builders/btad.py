"""BTAD (Mishra et al., 2021): the MVTec-style layout with ok/ko folders.

Layout: <root>/{01,02,03}/train/ok/*, test/ok/*, test/ko/*, ground_truth/ko/<stem>.png
(or .bmp). Images are BMP in some products and PNG in others; masks are not strictly
two-valued, so they are binarised with > 128.
"""

from spt_jax.data.builders import mvtec


class Btad(mvtec.MvtecAd):
  """BTAD (beanTech anomaly detection): 3 industrial products, 01 to 03."""

  LAYOUT = ("<root>/<01|02|03>/train/ok/<name>.bmp|png\n"
            "<root>/<01|02|03>/test/<ok|ko>/<name>.bmp|png\n"
            "<root>/<01|02|03>/ground_truth/ko/<name>.png|bmp")
  NORMAL = "ok"
  MASK_NAMES = ("{stem}.png", "{stem}.bmp")
