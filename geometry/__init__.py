"""Face geometry that every layer shares: pure functions and constants, no stages, no I/O.

It imports nothing else of the project (numpy, OpenCV and mediapipe's mesh connection tables
only), so the annotators, the trainer, generation and inspection can all build on it:

* `mesh`: the face-mesh topology (triangles, contours, mirror indexing, the canonical 3-D face);
* `raster`: the mesh z-buffer, the face silhouette and the depth map;
* `mask`: the 10 pseudo-mask classes, their triangles, rendering and colours;
* `pose`: Euler angles, rotations, crop/source frames and PnP from landmarks;
* `pose_image`: the pose branch's condition image (three axes);
* `align`: the FFHQ crop square, the warp and the loose view for Hopenet.
"""
