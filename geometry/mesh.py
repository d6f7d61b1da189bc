"""Face-mesh topology: triangles, contours, mirror indexing and the canonical 3-D face.

Why one module: the depth map and the pseudo mask must cover exactly the same pixels (the
trainer's depth loss and mask loss see the same face) and agree on which surface is in
front, so both come from `raster.zbuffer` over one triangle list; head pose needs a 3-D
reference face in the same landmark indexing.

Everything here is derived from what the mediapipe 0.10.x wheel ships
(``mediapipe.python.solutions.face_mesh_connections``) or is a documented constant:

* `MESH_TRIANGLES`: the 852 triangles of the 468-point face mesh, recovered from the edge
  set ``FACEMESH_TESSELATION`` as its 3-cliques, less the two "separating" 3-cycles around
  the degree-3 vertices 102 and 331 (the cliques all of whose edges lie in 3 cliques).
* The mesh leaves the eyes and the mouth open; `HOLE_TRIANGLES` closes them by stitching
  the upper and lower contour of each opening, so the face silhouette has no holes and the
  depth there is interpolated across the opening.
* `MIRROR_INDEX`: landmark i of a horizontally flipped image is landmark MIRROR_INDEX[i] of
  the original (x -> 1 - x). Measured, not assumed: mediapipe was run on the sample photos
  (obama, obama2, obama3, biden, astronaut) and their mirror images and the points matched
  by optimal assignment; the result is an involution whose 28 fixed points are the midline.
* `CANONICAL_FACE`: a 468 x 3 reference face in centimetres. The wheel does not ship
  mediapipe's ``canonical_face_model.obj`` (nor the geometry-pipeline metadata: only the
  tasks API's ``.task`` bundles carry it), so it is `derive_canonical_face` of the same 20
  meshes (5 photos, each meshed as is and mirrored, each also reflected through
  `MIRROR_INDEX`), rounded to 0.1 mm. Axes: x to the subject's left (the image's right in a
  frontal photo), y down, z away from the camera (the nose tip has the smallest z); the face
  looks along -z when the head pose is zero. Zero pitch is the pose in which the least-squares
  plane of the face oval (``FACEMESH_FACE_OVAL``) faces the camera. It is exactly symmetric.
"""
from __future__ import annotations

from collections import Counter

import numpy as np
from mediapipe.python.solutions.face_mesh_connections import FACEMESH_FACE_OVAL, FACEMESH_TESSELATION

N_MESH = 468  # landmarks with mesh topology; 468..477 are the iris points (refine_landmarks)

# Contours as ordered index chains, named by the side of the IMAGE they appear on in a
# non-mirrored photo: mediapipe's "RIGHT_EYE" is the subject's right eye = the image's left.
EYE_IMG_LEFT_UPPER = (33, 246, 161, 160, 159, 158, 157, 173, 133)  # FACEMESH_RIGHT_EYE
EYE_IMG_LEFT_LOWER = (33, 7, 163, 144, 145, 153, 154, 155, 133)
EYE_IMG_RIGHT_UPPER = (263, 466, 388, 387, 386, 385, 384, 398, 362)  # FACEMESH_LEFT_EYE
EYE_IMG_RIGHT_LOWER = (263, 249, 390, 373, 374, 380, 381, 382, 362)
BROW_IMG_LEFT_UPPER = (70, 63, 105, 66, 107)  # FACEMESH_RIGHT_EYEBROW
BROW_IMG_LEFT_LOWER = (46, 53, 52, 65, 55)
BROW_IMG_RIGHT_UPPER = (300, 293, 334, 296, 336)  # FACEMESH_LEFT_EYEBROW
BROW_IMG_RIGHT_LOWER = (276, 283, 282, 295, 285)
LIP_UPPER_OUTER = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291)  # FACEMESH_LIPS
LIP_LOWER_OUTER = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291)
LIP_UPPER_INNER = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308)
LIP_LOWER_INNER = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308)
# FACEMESH_NOSE is only the dorsum line and the outline of the tip and wings, so the whole
# nose (root between the eyes, side walls, wings) is this explicit loop, symmetric under
# MIRROR_INDEX: image-left side from the root down, then the columella, then back up.
NOSE_LOOP = (168, 193, 122, 196, 174, 217, 126, 209, 49, 48, 64, 98, 97, 2,
             326, 327, 294, 278, 279, 429, 355, 437, 399, 419, 351, 417)


def _mesh_triangles() -> np.ndarray:
    edges = np.array(sorted(FACEMESH_TESSELATION))
    adj = np.zeros((N_MESH, N_MESH), bool)
    adj[edges[:, 0], edges[:, 1]] = adj[edges[:, 1], edges[:, 0]] = True
    i, j = np.nonzero(np.triu(adj))
    tris = [(a, b, c) for a, b in zip(i, j) for c in np.nonzero(adj[a] & adj[b])[0] if c > b]
    use = Counter(e for t in tris for e in ((t[0], t[1]), (t[0], t[2]), (t[1], t[2])))
    keep = [t for t in tris if min(use[(t[0], t[1])], use[(t[0], t[2])], use[(t[1], t[2])]) < 3]
    return np.array(keep, np.int32)


def _stitch(upper: tuple[int, ...], lower: tuple[int, ...]) -> list[tuple[int, int, int]]:
    """Triangle strip between two chains that share their end points (an eye or the mouth)."""
    tris = []
    for k in range(len(upper) - 1):
        tris.append((upper[k], upper[k + 1], lower[k + 1]))
        tris.append((upper[k], lower[k + 1], lower[k]))
    return [t for t in tris if len(set(t)) == 3]


MESH_TRIANGLES: np.ndarray = _mesh_triangles()
HOLE_TRIANGLES: np.ndarray = np.array(
    _stitch(EYE_IMG_LEFT_UPPER, EYE_IMG_LEFT_LOWER) + _stitch(EYE_IMG_RIGHT_UPPER, EYE_IMG_RIGHT_LOWER)
    + _stitch(LIP_UPPER_INNER, LIP_LOWER_INNER), np.int32)
FACE_TRIANGLES: np.ndarray = np.concatenate([MESH_TRIANGLES, HOLE_TRIANGLES])


def _walk(edges: frozenset[tuple[int, int]], start: int) -> tuple[int, ...]:
    """Order a set of directed edges that forms one cycle, from ``start``."""
    nxt = dict(edges)
    loop = [start]
    while nxt[loop[-1]] != start:
        loop.append(nxt[loop[-1]])
    return tuple(loop)


FACE_OVAL: tuple[int, ...] = _walk(FACEMESH_FACE_OVAL, 10)  # the mesh's outer boundary, from the forehead

MIRROR_INDEX: np.ndarray = np.array("""
0 1 2 248 4 5 6 249 8 9 10 11 12 13 14 15 16 17 18 19 250 251 252 253 254 255 256 257 258 259
260 261 262 263 264 265 266 267 268 269 270 271 272 273 274 275 276 277 278 279 280 281 282 283
284 285 286 287 288 289 290 291 292 293 294 295 296 297 298 299 300 301 302 303 304 305 306 307
308 309 310 311 312 313 314 315 316 317 318 319 320 321 322 323 94 324 325 326 327 328 329 330
331 332 333 334 335 336 337 338 339 340 341 342 343 344 345 346 347 348 349 350 351 352 353 354
355 356 357 358 359 360 361 362 363 364 365 366 367 368 369 370 371 372 373 374 375 376 377 378
379 151 152 380 381 382 383 384 385 386 387 388 389 390 164 391 392 393 168 394 395 396 397 398
399 175 400 401 402 403 404 405 406 407 408 409 410 411 412 413 414 415 416 417 418 195 419 197
420 199 200 421 422 423 424 425 426 427 428 429 430 431 432 433 434 435 436 437 438 439 440 441
442 443 444 445 446 447 448 449 450 451 452 453 454 455 456 457 458 459 460 461 462 463 464 465
466 467 3 7 20 21 22 23 24 25 26 27 28 29 30 31 32 33 34 35 36 37 38 39 40 41 42 43 44 45 46 47
48 49 50 51 52 53 54 55 56 57 58 59 60 61 62 63 64 65 66 67 68 69 70 71 72 73 74 75 76 77 78 79
80 81 82 83 84 85 86 87 88 89 90 91 92 93 95 96 97 98 99 100 101 102 103 104 105 106 107 108 109
110 111 112 113 114 115 116 117 118 119 120 121 122 123 124 125 126 127 128 129 130 131 132 133
134 135 136 137 138 139 140 141 142 143 144 145 146 147 148 149 150 153 154 155 156 157 158 159
160 161 162 163 165 166 167 169 170 171 172 173 174 176 177 178 179 180 181 182 183 184 185 186
187 188 189 190 191 192 193 194 196 198 201 202 203 204 205 206 207 208 209 210 211 212 213 214
215 216 217 218 219 220 221 222 223 224 225 226 227 228 229 230 231 232 233 234 235 236 237 238
239 240 241 242 243 244 245 246 247 473 476 475 474 477 468 471 470 469 472
""".split(), np.int64)

CANONICAL_FACE: np.ndarray = np.array("""
0.00 2.63 -1.83   0.00 0.59 -3.56   0.00 1.20 -1.99   -0.53 -1.58 -2.62   0.00 -0.09 -3.75
0.00 -0.95 -3.46   0.00 -3.04 -1.68   -4.27 -3.16 0.92   0.00 -4.44 -1.16   0.00 -5.25 -1.22
0.00 -8.38 -0.34   0.00 2.82 -1.75   0.00 3.01 -1.58   0.00 3.13 -1.32   0.00 4.14 -1.11
0.00 4.37 -1.23   0.00 4.66 -1.40   0.00 5.00 -1.34   0.00 5.77 -0.85   0.00 0.94 -3.24
-0.64 0.91 -2.39   -6.69 -5.41 4.03   -2.58 -2.74 0.28   -3.18 -2.67 0.32   -3.76 -2.67 0.48
-4.54 -2.93 1.00   -2.08 -2.87 0.33   -3.51 -4.27 0.08   -2.81 -4.25 0.10   -4.15 -4.14 0.27
-4.55 -3.89 0.53   -5.07 -2.54 1.30   -2.45 6.68 -0.02   -4.50 -3.29 1.12   -6.97 -2.67 4.13
-5.78 -2.90 1.95   -3.23 -0.07 -0.47   -0.93 2.49 -1.76   -0.86 2.97 -1.46   -1.83 2.67 -1.33
-2.42 2.89 -0.73   -1.58 3.00 -1.13   -2.14 3.09 -0.60   -3.18 4.08 0.31   -0.54 0.57 -3.50
-0.61 -0.08 -3.67   -5.38 -4.27 0.69   -1.87 -1.65 -0.51   -2.12 0.29 -1.90   -2.15 -0.06 -1.69
-5.09 -0.18 0.36   -0.58 -0.89 -3.27   -3.91 -4.93 -0.41   -4.77 -4.70 0.07   -6.04 -6.54 2.85
-1.25 -4.52 -0.97   -2.21 -4.04 0.29   -3.70 3.30 0.45   -6.41 3.53 5.47   -1.66 0.68 -1.68
-1.12 0.89 -1.79   -3.10 3.37 0.46   -2.92 3.38 0.30   -5.10 -5.06 0.42   -2.18 0.54 -1.56
-2.75 -4.91 -0.76   -2.86 -5.39 -0.87   -3.52 -8.05 0.49   -5.56 -5.88 1.50   -3.12 -6.84 -0.19
-5.76 -4.53 1.26   -6.23 -4.97 2.60   -0.91 2.76 -1.66   -1.71 2.85 -1.25   -2.28 2.99 -0.71
-1.51 0.79 -1.57   -3.01 3.38 0.38   -2.65 3.76 -0.01   -2.84 3.38 0.28   -1.29 0.54 -2.56
-2.02 3.14 -0.52   -1.47 3.08 -0.91   -0.80 3.09 -1.22   -0.97 5.70 -0.78   -0.92 4.93 -1.26
-0.89 4.59 -1.29   -0.84 4.30 -1.12   -0.78 4.09 -1.00   -1.98 3.83 -0.35   -2.09 3.93 -0.46
-2.23 4.08 -0.55   -2.34 4.26 -0.44   -2.94 2.21 -0.60   -7.05 0.25 6.52   0.00 1.08 -2.44
-2.39 3.67 0.04   -2.52 3.70 -0.02   -0.92 1.15 -1.81   -1.98 0.91 -1.11   -1.01 1.03 -1.82
-2.55 -1.30 -0.30   -3.58 -0.90 -0.15   -2.29 0.21 -1.33   -5.04 -7.45 1.59   -4.56 -6.52 0.60
-4.12 -5.39 -0.24   -2.62 4.71 -0.06   -1.46 -5.28 -1.18   -1.65 -6.92 -0.64   -1.90 -8.33 -0.16
-4.25 -2.74 0.75   -5.74 -2.11 1.66   -1.74 -3.01 0.41   -5.15 -3.60 1.07   -1.42 -2.04 -0.74
-1.68 0.10 -2.53   -6.49 -1.59 2.33   -5.31 -1.72 1.07   -4.51 -1.53 0.49   -3.33 -1.65 0.17
-2.48 -1.91 0.04   -1.84 -2.19 -0.13   -0.59 -2.88 -1.42   -6.48 -0.30 2.11   -5.64 -3.65 1.37
-0.34 0.92 -3.20   -1.89 -1.03 -0.81   -7.17 -2.68 6.20   -1.37 -2.51 -0.23   -2.35 0.22 -0.67
-4.78 -3.24 1.24   -1.70 -0.33 -2.27   -6.85 1.85 6.15   -1.75 -3.22 0.59   -1.13 -0.67 -2.89
-5.13 4.99 2.33   -5.05 5.87 3.30   -7.03 0.03 4.31   -5.89 4.10 3.05   -6.62 -3.93 3.55
-2.57 7.45 0.26   -0.27 1.06 -2.39   -2.47 -0.58 -0.59   -6.32 -2.79 2.59   -3.68 -3.03 0.55
-3.18 -3.02 0.39   -2.77 3.84 0.08   -6.43 1.04 2.27   -1.39 8.50 0.29   -3.33 7.48 1.64
-4.14 6.80 2.40   0.00 -6.89 -0.80   0.00 8.65 0.10   -2.69 -3.06 0.37   -2.22 -3.14 0.45
-1.90 -3.18 0.57   -6.09 -3.77 2.02   -2.31 -3.62 0.40   -2.83 -3.77 0.29   -3.35 -3.78 0.31
-3.86 -3.67 0.46   -4.18 -3.51 0.66   -7.03 -4.21 5.26   -4.02 -3.09 0.74   0.00 1.69 -1.81
-2.28 1.86 -1.07   -1.64 0.59 -1.91   -0.99 1.70 -1.73   0.00 -3.75 -1.16   -4.29 5.93 1.73
-3.46 6.69 1.03   -1.41 7.96 -0.41   -5.77 4.88 4.40   -1.93 -3.38 0.51   -1.01 -1.87 -1.64
0.00 8.11 -0.57   -2.46 8.08 0.84   -6.86 1.50 4.16   -1.44 3.97 -0.71   -1.55 4.14 -0.82
-1.65 4.37 -0.93   -1.71 4.67 -0.86   -1.91 5.29 -0.48   -2.59 3.22 -0.12   -2.73 3.17 -0.10
-2.85 3.12 -0.10   -3.46 2.68 -0.03   -5.64 1.31 1.01   -0.98 -2.50 -1.04   -1.30 -3.66 0.14
-1.68 -3.60 0.40   -2.46 3.24 -0.07   -5.71 3.01 1.94   -0.76 -3.67 -0.72   -2.19 5.93 -0.21
0.00 -1.67 -2.84   -0.56 -2.20 -2.07   0.00 -2.34 -2.23   -1.49 -0.88 -1.66   0.00 7.36 -0.86
0.00 6.49 -0.84   -1.13 6.40 -0.68   -3.65 4.41 0.62   -2.86 0.76 -0.49   -2.99 5.26 0.24
-4.26 0.70 -0.21   -3.45 1.43 -0.30   -4.81 1.77 0.37   -1.33 7.23 -0.67   -1.92 -0.55 -1.21
-4.13 5.04 1.11   -3.30 5.91 0.62   -4.19 3.46 0.67   -6.28 2.21 2.47   -4.92 3.70 1.22
-6.52 2.87 3.85   -3.99 2.22 0.08   -1.43 -1.45 -1.19   -1.48 0.42 -2.68   -1.92 0.52 -1.99
-1.17 -0.01 -3.15   -1.78 -4.15 -0.01   -2.77 -4.47 -0.14   -3.66 -4.51 -0.11   -4.39 -4.35 0.14
-4.90 -4.06 0.53   -5.21 -3.07 1.49   -7.08 -1.34 4.26   -4.73 -2.31 0.98   -4.09 -2.17 0.59
-3.28 -2.20 0.33   -2.52 -2.35 0.24   -1.93 -2.55 0.19   -1.52 -2.74 0.15   -7.13 -1.23 6.58
-1.93 0.67 -1.68   -1.02 -1.28 -2.17   -1.01 0.48 -3.18   -0.67 0.82 -2.94   -1.02 0.59 -2.87
-1.77 0.85 -1.47   -0.54 0.88 -3.11   -0.49 1.01 -2.39   -1.53 -3.20 0.48   -1.21 -3.07 0.08
-1.01 -2.97 -0.41   -4.36 -3.39 0.86   -4.80 -3.60 0.89   0.53 -1.58 -2.62   4.27 -3.16 0.92
0.64 0.91 -2.39   6.69 -5.41 4.03   2.58 -2.74 0.28   3.18 -2.67 0.32   3.76 -2.67 0.48
4.54 -2.93 1.00   2.08 -2.87 0.33   3.51 -4.27 0.08   2.81 -4.25 0.10   4.15 -4.14 0.27
4.55 -3.89 0.53   5.07 -2.54 1.30   2.45 6.68 -0.02   4.50 -3.29 1.12   6.97 -2.67 4.13
5.78 -2.90 1.95   3.23 -0.07 -0.47   0.93 2.49 -1.76   0.86 2.97 -1.46   1.83 2.67 -1.33
2.42 2.89 -0.73   1.58 3.00 -1.13   2.14 3.09 -0.60   3.18 4.08 0.31   0.54 0.57 -3.50
0.61 -0.08 -3.67   5.38 -4.27 0.69   1.87 -1.65 -0.51   2.12 0.29 -1.90   2.15 -0.06 -1.69
5.09 -0.18 0.36   0.58 -0.89 -3.27   3.91 -4.93 -0.41   4.77 -4.70 0.07   6.04 -6.54 2.85
1.25 -4.52 -0.97   2.21 -4.04 0.29   3.70 3.30 0.45   6.41 3.53 5.47   1.66 0.68 -1.68
1.12 0.89 -1.79   3.10 3.37 0.46   2.92 3.38 0.30   5.10 -5.06 0.42   2.18 0.54 -1.56
2.75 -4.91 -0.76   2.86 -5.39 -0.87   3.52 -8.05 0.49   5.56 -5.88 1.50   3.12 -6.84 -0.19
5.76 -4.53 1.26   6.23 -4.97 2.60   0.91 2.76 -1.66   1.71 2.85 -1.25   2.28 2.99 -0.71
1.51 0.79 -1.57   3.01 3.38 0.38   2.65 3.76 -0.01   2.84 3.38 0.28   1.29 0.54 -2.56
2.02 3.14 -0.52   1.47 3.08 -0.91   0.80 3.09 -1.22   0.97 5.70 -0.78   0.92 4.93 -1.26
0.89 4.59 -1.29   0.84 4.30 -1.12   0.78 4.09 -1.00   1.98 3.83 -0.35   2.09 3.93 -0.46
2.23 4.08 -0.55   2.34 4.26 -0.44   2.94 2.21 -0.60   7.05 0.25 6.52   2.39 3.67 0.04
2.52 3.70 -0.02   0.92 1.15 -1.81   1.98 0.91 -1.11   1.01 1.03 -1.82   2.55 -1.30 -0.30
3.58 -0.90 -0.15   2.29 0.21 -1.33   5.04 -7.45 1.59   4.56 -6.52 0.60   4.12 -5.39 -0.24
2.62 4.71 -0.06   1.46 -5.28 -1.18   1.65 -6.92 -0.64   1.90 -8.33 -0.16   4.25 -2.74 0.75
5.74 -2.11 1.66   1.74 -3.01 0.41   5.15 -3.60 1.07   1.42 -2.04 -0.74   1.68 0.10 -2.53
6.49 -1.59 2.33   5.31 -1.72 1.07   4.51 -1.53 0.49   3.33 -1.65 0.17   2.48 -1.91 0.04
1.84 -2.19 -0.13   0.59 -2.88 -1.42   6.48 -0.30 2.11   5.64 -3.65 1.37   0.34 0.92 -3.20
1.89 -1.03 -0.81   7.17 -2.68 6.20   1.37 -2.51 -0.23   2.35 0.22 -0.67   4.78 -3.24 1.24
1.70 -0.33 -2.27   6.85 1.85 6.15   1.75 -3.22 0.59   1.13 -0.67 -2.89   5.13 4.99 2.33
5.05 5.87 3.30   7.03 0.03 4.31   5.89 4.10 3.05   6.62 -3.93 3.55   2.57 7.45 0.26
0.27 1.06 -2.39   2.47 -0.58 -0.59   6.32 -2.79 2.59   3.68 -3.03 0.55   3.18 -3.02 0.39
2.77 3.84 0.08   6.43 1.04 2.27   1.39 8.50 0.29   3.33 7.48 1.64   4.14 6.80 2.40
2.69 -3.06 0.37   2.22 -3.14 0.45   1.90 -3.18 0.57   6.09 -3.77 2.02   2.31 -3.62 0.40
2.83 -3.77 0.29   3.35 -3.78 0.31   3.86 -3.67 0.46   4.18 -3.51 0.66   7.03 -4.21 5.26
4.02 -3.09 0.74   2.28 1.86 -1.07   1.64 0.59 -1.91   0.99 1.70 -1.73   4.29 5.93 1.73
3.46 6.69 1.03   1.41 7.96 -0.41   5.77 4.88 4.40   1.93 -3.38 0.51   1.01 -1.87 -1.64
2.46 8.08 0.84   6.86 1.50 4.16   1.44 3.97 -0.71   1.55 4.14 -0.82   1.65 4.37 -0.93
1.71 4.67 -0.86   1.91 5.29 -0.48   2.59 3.22 -0.12   2.73 3.17 -0.10   2.85 3.12 -0.10
3.46 2.68 -0.03   5.64 1.31 1.01   0.98 -2.50 -1.04   1.30 -3.66 0.14   1.68 -3.60 0.40
2.46 3.24 -0.07   5.71 3.01 1.94   0.76 -3.67 -0.72   2.19 5.93 -0.21   0.56 -2.20 -2.07
1.49 -0.88 -1.66   1.13 6.40 -0.68   3.65 4.41 0.62   2.86 0.76 -0.49   2.99 5.26 0.24
4.26 0.70 -0.21   3.45 1.43 -0.30   4.81 1.77 0.37   1.33 7.23 -0.67   1.92 -0.55 -1.21
4.13 5.04 1.11   3.30 5.91 0.62   4.19 3.46 0.67   6.28 2.21 2.47   4.92 3.70 1.22
6.52 2.87 3.85   3.99 2.22 0.08   1.43 -1.45 -1.19   1.48 0.42 -2.68   1.92 0.52 -1.99
1.17 -0.01 -3.15   1.78 -4.15 -0.01   2.77 -4.47 -0.14   3.66 -4.51 -0.11   4.39 -4.35 0.14
4.90 -4.06 0.53   5.21 -3.07 1.49   7.08 -1.34 4.26   4.73 -2.31 0.98   4.09 -2.17 0.59
3.28 -2.20 0.33   2.52 -2.35 0.24   1.93 -2.55 0.19   1.52 -2.74 0.15   7.13 -1.23 6.58
1.93 0.67 -1.68   1.02 -1.28 -2.17   1.01 0.48 -3.18   0.67 0.82 -2.94   1.02 0.59 -2.87
1.77 0.85 -1.47   0.54 0.88 -3.11   0.49 1.01 -2.39   1.53 -3.20 0.48   1.21 -3.07 0.08
1.01 -2.97 -0.41   4.36 -3.39 0.86   4.80 -3.60 0.89
""".split(), np.float64).reshape(N_MESH, 3)


def as_landmarks(landmarks: np.ndarray) -> np.ndarray:
    """The landmarks as an array, checked: (478, 3) (at least the 468 mesh points) x, y, z."""
    lm = np.asarray(landmarks)
    if lm.ndim != 2 or lm.shape[0] < N_MESH or lm.shape[1] != 3:
        raise ValueError(f"landmarks must be (478, 3) (at least {N_MESH} x 3), got {lm.shape}")
    return lm


def triangles_inside(loop: tuple[int, ...], points: np.ndarray = CANONICAL_FACE) -> np.ndarray:
    """Boolean per `FACE_TRIANGLES`: is the triangle's centroid inside the landmark polygon
    ``loop``, both taken on the frontal face ``points`` (x, y; even-odd rule)? Turns a contour
    into a set of mesh triangles, i.e. a face part that moves with the mesh."""
    c = points[FACE_TRIANGLES, :2].mean(1)
    poly = points[list(loop), :2]
    a, b = poly, np.roll(poly, -1, axis=0)
    cross = (a[:, 1] > c[:, None, 1]) != (b[:, 1] > c[:, None, 1])
    with np.errstate(divide="ignore", invalid="ignore"):
        x = a[:, 0] + (c[:, None, 1] - a[:, 1]) * (b[:, 0] - a[:, 0]) / (b[:, 1] - a[:, 1])
    return (cross & (c[:, None, 0] < x)).sum(1) % 2 == 1


def derive_canonical_face(meshes: list[np.ndarray]) -> np.ndarray:
    """How `CANONICAL_FACE` was made: a symmetric mean shape of mediapipe meshes.

    ``meshes`` are (478 or 468, 3) landmark arrays of 512 px crops (x, y in [0, 1], z in x's
    scale). Each mesh and its reflection through `MIRROR_INDEX` are Procrustes-aligned
    (proper rotation + scale) to their running mean; the mean is put in the frame described
    in the module docstring (x: the symmetry-plane normal; z: normal of the face-oval plane),
    symmetrised exactly, centred, and scaled to an outer-canthus distance (33-263) of 9 cm.
    """
    def flip(s: np.ndarray) -> np.ndarray:
        return s * np.array([-1.0, 1.0, 1.0])

    mirror = MIRROR_INDEX[:N_MESH]
    shapes = []
    for m in meshes:
        s = np.asarray(m, np.float64)[:N_MESH]
        s = s - s.mean(0)
        shapes += [s, flip(s)[mirror]]
    ref = shapes[0] / np.linalg.norm(shapes[0])
    for _ in range(50):
        aligned = []
        for s in shapes:
            u, sv, vt = np.linalg.svd(s.T @ ref)
            d = np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))])
            aligned.append(s @ (u @ d @ vt) * (sv * np.diag(d)).sum() / (s ** 2).sum())
        mean = np.mean(aligned, 0)
        mean /= np.linalg.norm(mean)
        done = np.abs(mean - ref).max() < 1e-10
        ref = mean
        if done:
            break
    ex = np.linalg.svd(ref - ref[mirror], full_matrices=False)[2][0]
    ex *= np.sign((ref[263] - ref[33]) @ ex)
    oval = ref[list(FACE_OVAL)]
    ez = np.linalg.svd(oval - oval.mean(0))[2][2]
    ez -= (ez @ ex) * ex
    ez /= np.linalg.norm(ez)
    ez *= -np.sign((ref[1] - ref.mean(0)) @ ez)  # nose tip nearer the camera: smaller z
    frame = np.stack([ex, np.cross(ez, ex), ez])
    out = (ref - ref.mean(0)) @ frame.T
    out = 0.5 * (out + flip(out)[mirror])
    out -= out.mean(0)
    return out * (9.0 / np.linalg.norm(out[263] - out[33]))
