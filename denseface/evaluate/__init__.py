"""``denseface evaluate``: the paper's §4 metrics on images a model generates (or made elsewhere).

``metrics``: the maths (pure functions); ``scorers``: the models behind each metric;
``image_set``: the on-disk layout of subjects, prompts and evaluated images;
``config``: the command's settings (generation's, reused); ``runner``: generation + scoring +
outputs; ``report``: the HTML page.
"""
