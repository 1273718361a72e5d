"""Satellite, drone and street renderers for a `Scene`, plus camera placement.

Perspective views use a column ray march. A camera without roll sees every vertical plane through its
centre as one azimuth; along one azimuth, a heightfield occludes by a running maximum of the elevation
slope of the samples. So we march once per azimuth column (not once per pixel): samples (columns x
steps) -> cumulative max slope -> every pixel ray finds its first hit with one `searchsorted` on the
flattened, column-offset keys. That is exact occlusion at a cost of columns x steps instead of
pixels x steps, and it works at any pitch (the street's level gaze and the drone's 45-60 degree tilt).
"""
from __future__ import annotations

import numpy as np

from .scene import CELL, HALF, N, Scene

STEP = 0.5      # metres between samples along a column; one cell, so no wall is stepped over


def _g(t):
    """A bounded, monotone map of slopes (so column offsets keep the keys sorted)."""
    return t / (1.0 + np.abs(t))


def _bilinear_top(sc: Scene, px, py):
    """Top colour at metric positions; off-grid positions get the outskirts colour."""
    fj = px * np.float32(1 / CELL) + np.float32(N / 2 - 0.5)
    fi = np.float32(N / 2 - 0.5) - py * np.float32(1 / CELL)
    j0 = np.clip(np.floor(fj), 0, N - 2).astype(np.int32)
    i0 = np.clip(np.floor(fi), 0, N - 2).astype(np.int32)
    wj, wi = np.clip(fj - j0, 0, 1), np.clip(fi - i0, 0, 1)
    a = i0 * N + j0
    w00, w01, w10, w11 = (1 - wj) * (1 - wi), wj * (1 - wi), (1 - wj) * wi, wj * wi
    off = (fj < 0) | (fj > N - 1) | (fi < 0) | (fi > N - 1)
    out = np.empty(px.shape + (3,), np.float32)
    for c, plane in enumerate(_planes(sc, "top")):   # 1-D gathers per channel: much faster than rows
        v = plane[a] * w00 + plane[a + 1] * w01 + plane[a + N] * w10 + plane[a + N + 1] * w11
        out[:, c] = np.where(off, sc.outskirts[c], v)
    return out


def _planes(sc: Scene, name: str) -> np.ndarray:
    """A colour map as three contiguous flat channel planes (cached on the scene)."""
    key = "_planes_" + name
    if key not in sc.cache:
        sc.cache[key] = np.ascontiguousarray(getattr(sc, name).reshape(-1, 3).T)
    return sc.cache[key]


def _padded_height(sc: Scene) -> np.ndarray:
    """Height with a zero border, flattened: clipped sample indices then need no bounds test."""
    if "_hpad" not in sc.cache:
        sc.cache["_hpad"] = np.pad(sc.height, 1).ravel()
    return sc.cache["_hpad"]


def render_view(sc: Scene, cam: dict, size: int, ss: float = 2) -> np.ndarray:
    """Perspective view (float RGB, size x size) from cam = {x, y, z, heading, pitch, fov} (degrees;
    heading is a compass bearing, pitch < 0 looks down, fov is horizontal = vertical)."""
    f32 = np.float32
    x0, y0, z0 = float(cam["x"]), float(cam["y"]), float(cam["z"])
    yaw, pit = np.radians(cam["heading"]), np.radians(cam["pitch"])
    th = np.tan(np.radians(cam["fov"]) / 2)
    m = int(round(size * ss))
    t = (((np.arange(m) + 0.5) / m * 2 - 1) * th).astype(f32)
    # Rays in x-major order, bottom to top: their search keys then arrive almost sorted (fast search).
    xc, yc = t[:, None], t[None, :]
    sy, cy, sp, cp = (f32(v) for v in (np.sin(yaw), np.cos(yaw), np.sin(pit), np.cos(pit)))
    dx = (sy * cp + xc * cy - yc * (sy * sp)).ravel()
    dy = (cy * cp - xc * sy - yc * (cy * sp)).ravel()
    dz = np.broadcast_to(sp + yc * cp, (m, m)).ravel()
    inv_hl = 1 / np.hypot(dx, dy)
    tan_e = dz * inv_hl
    ux, uy = dx * inv_hl, dy * inv_hl            # unit horizontal direction of each ray
    az = np.arctan2(dy, dx)                      # math angle (east = 0, north = pi/2)
    fwd = float(np.arctan2(cy, sy))
    rel = (az - f32(fwd) + f32(np.pi)) % f32(2 * np.pi) - f32(np.pi)
    amin, amax = float(rel.min()), float(rel.max())
    da = 2 * th / m * 0.9                         # a little finer than a sub-pixel at the centre
    na = min(int(np.ceil((amax - amin) / da)) + 1, 4 * m)
    da = (amax - amin) / max(na - 1, 1)
    col = np.rint((rel - f32(amin)) * f32(1 / da)).astype(np.int64)
    col_az = fwd + amin + da * np.arange(na)
    ca, sa = np.cos(col_az), np.sin(col_az)

    # How far to march: out of the grid, or until the shallowest ray is below the ground anyway.
    with np.errstate(divide="ignore"):
        tx = np.where(ca > 0, (HALF - x0) / ca, np.where(ca < 0, (-HALF - x0) / ca, np.inf))
        ty = np.where(sa > 0, (HALF - y0) / sa, np.where(sa < 0, (-HALF - y0) / sa, np.inf))
    dmax = float(np.minimum(tx, ty).max())
    tmax = float(tan_e.max())
    if tmax < 0:
        dmax = min(dmax, z0 / -tmax + STEP)
    dist = np.arange(STEP / 2, max(dmax, STEP) + STEP, STEP, dtype=f32)
    k = dist.size

    # March: height of every (column, step) sample, running max of its elevation slope.
    step_cells = dist / CELL
    j = np.clip(ca.astype(f32)[:, None] * step_cells + f32(x0 / CELL + N / 2 + 1), 0, N + 1).astype(np.int32)
    i = np.clip(f32(N / 2 + 1 - y0 / CELL) - sa.astype(f32)[:, None] * step_cells, 0, N + 1).astype(np.int32)
    hs = _padded_height(sc)[i * (N + 2) + j]
    slope = (hs - f32(z0)) / dist
    run = np.maximum.accumulate(slope, axis=1)
    # Only samples that raise the running max can be a ray's first hit: search among those.
    rec = np.ones(slope.shape, bool)
    rec[:, 1:] = slope[:, 1:] > run[:, :-1]
    rflat = np.flatnonzero(rec)
    rcol = rflat // k
    rkeys = _g(slope.ravel()[rflat].astype(np.float64)) + 2 + 4 * rcol
    qkeys = _g(tan_e.astype(np.float64)) + 2 + 4 * col
    r = np.minimum(np.searchsorted(rkeys, qkeys), rflat.size - 1)
    hit = (rcol[r] == col) & (rkeys[r] >= qkeys)
    flat = rflat[r]
    s = flat - rcol[r] * k

    h_hit = hs.ravel()[flat]
    d_s = dist[s]
    d_prev = np.where(s > 0, d_s - f32(STEP), f32(0))
    top = (s == 0) | (f32(z0) + d_prev * tan_e >= h_hit - f32(1e-4))
    # Tops: the exact plane hit between the two samples (sharp lane marks and roof rims);
    # rays that miss everything below the horizon land on the flat ground beyond the grid.
    down = tan_e < 0
    with np.errstate(divide="ignore", invalid="ignore"):
        d_top = np.where(hit, np.clip((f32(z0) - h_hit) / -tan_e, d_prev, d_s), f32(z0) / -tan_e)
    d_use = np.where(hit & ~top, (d_prev + d_s) / 2, np.where(down | hit, d_top, f32(1e9)))
    d_use = np.where(hit & top & ~down, d_s, d_use)
    px, py = f32(x0) + ux * d_use, f32(y0) + uy * d_use

    rgb = _bilinear_top(sc, px, py)
    sides = np.flatnonzero(hit & ~top)
    if sides.size:
        cell = (i.ravel()[flat[sides]] - 1) * N + (j.ravel()[flat[sides]] - 1)
        rgb[sides] = _facade(sc, cell, px[sides], py[sides], f32(z0) + tan_e[sides] * d_use[sides],
                             h_hit[sides])
    horizon, zenith = sc.sky
    sky = np.flatnonzero(~hit & ~down)
    e = np.clip(tan_e[sky], 0, 1)[:, None] ** 0.6
    rgb[sky] = horizon * (1 - e) + zenith * e
    # Aerial perspective: far things fade to the horizon colour (hides the grid's edge).
    fade = (1 - np.exp(-np.minimum(d_use, 1e4) * np.sqrt(1 + tan_e * tan_e) / f32(sc.haze)))[:, None]
    fade[sky] = 0
    rgb = rgb * (1 - fade) + horizon * fade
    return _downsample(rgb.reshape(m, m, 3).transpose(1, 0, 2)[::-1], size)


def _downsample(img: np.ndarray, size: int) -> np.ndarray:
    """Box-filter a supersampled square float image down to size x size."""
    m = img.shape[0]
    if m == size:
        return np.ascontiguousarray(img)
    if m % size == 0:
        f = m // size
        return img.reshape(size, f, size, f, 3).mean((1, 3))
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(img[..., c])).resize(
        (size, size), Image.BOX)) for c in range(3)], -1)


def _facade(sc: Scene, cell, px, py, pz, h_top):
    """Wall colour at hit points: albedo x (sky + sun on this wall), windows by storey and rhythm."""
    side = _planes(sc, "side")[:, cell].T
    sun_share = sc.side_sun.ravel()[cell][:, None]
    light = sc.ambient * 0.9 + sc.sun_rgb * sun_share * np.sqrt(1 - sc.sun[2] ** 2)
    b = sc.bid.ravel()[cell]
    bx = sc.boxes
    rx, ry = px - bx["cx"][b], py - bx["cy"][b]
    lx = rx * bx["cos"][b] + ry * bx["sin"][b]
    ly = ry * bx["cos"][b] - rx * bx["sin"][b]
    storey = (pz / bx["floor_h"][b]) % 1.0
    rhythm = ((lx + ly) / bx["win_w"][b]) % 1.0
    win = ((b > 0) & (storey > 0.3) & (storey < 0.8) & (rhythm < bx["win_frac"][b])
           & (pz > 1.0) & (pz < h_top - 0.6))[:, None]
    colour = np.where(win, bx["win"][b], side) * light
    return colour * (0.72 + 0.28 * np.clip(pz / 3.0, 0, 1))[:, None]   # darker near the ground


def render_satellite(sc: Scene, size: int, metres: float = 96.0) -> np.ndarray:
    """Top-down orthographic, north-up: the central `metres` square of the top map, box-filtered."""
    cells = min(int(round(metres / CELL)), N)
    lo = (N - cells) // 2
    return _downsample(sc.top[lo:lo + cells, lo:lo + cells], size)


def photo_finish(img: np.ndarray, rng: np.random.Generator, difficulty: float) -> np.ndarray:
    """Per-image exposure, white balance and sensor noise (independent per view, so no location is
    recognisable by a shared global tint), then 8-bit."""
    d = float(difficulty)
    gain = np.exp(rng.normal(0, 0.05 + 0.12 * d))
    wb = np.exp(rng.normal(0, 0.02 + 0.05 * d, 3))
    noise = rng.normal(0, 0.008 + 0.02 * d, img.shape)
    out = img * (gain * wb) + noise
    return (np.clip(out, 0, 1) ** (1 / 1.15) * 255 + 0.5).astype(np.uint8)


# --- cameras ---------------------------------------------------------------------------------------

def _bearing(dx, dy):
    return float(np.degrees(np.arctan2(dx, dy)) % 360)


def drone_cameras(sc: Scene, rng: np.random.Generator, n: int) -> list[dict]:
    """An orbit around the target, descending: image-01 is the highest, as in University-1652, whose 54 views
    spiral down in about three turns (18 per turn); a few views make one turn."""
    tx, ty = sc.target["cx"], sc.target["cy"]
    look_z = sc.target["height"] * 0.5
    pitch = rng.uniform(45, 60, n)
    rng_m = np.sort(rng.uniform(55, 95, n))[::-1]
    alt = rng_m * np.sin(np.radians(pitch))
    order = np.argsort(-alt, kind="stable")
    start = rng.uniform(0, 360)
    turns = max(1, round(n / 18))
    cams = []
    for k, o in enumerate(order):
        heading = (start + k * 360 * turns / n * rng.uniform(0.8, 1.2)) % 360   # camera looks along heading
        p, r = np.radians(pitch[o]), rng_m[o]
        back = r * np.cos(p)
        cams.append(dict(x=float(tx - back * np.sin(np.radians(heading))),
                         y=float(ty - back * np.cos(np.radians(heading))),
                         z=float(look_z + r * np.sin(p)), heading=float(heading), pitch=float(-pitch[o]),
                         fov=55.0, range=float(r), altitude=float(look_z + r * np.sin(p))))
    return cams


def street_cameras(sc: Scene, rng: np.random.Generator, n: int, difficulty: float) -> list[dict]:
    """Standing on a road or sidewalk 4-22 m from the target's walls, with a clear line of sight to it,
    looking towards it (with some jitter)."""
    t = sc.target
    cells = np.flatnonzero(sc.road.ravel())
    gx = (cells % N + 0.5 - N / 2) * CELL
    gy = (N / 2 - cells // N - 0.5) * CELL
    lx = (gx - t["cx"]) * t["cos"] + (gy - t["cy"]) * t["sin"]
    ly = -(gx - t["cx"]) * t["sin"] + (gy - t["cy"]) * t["cos"]
    wall = np.hypot(np.maximum(np.abs(lx) - t["ha"], 0), np.maximum(np.abs(ly) - t["hb"], 0))
    near = np.flatnonzero((wall > 4) & (wall < 22))
    if near.size == 0:
        near = np.argsort(wall)[:50]
    pick = near[rng.permutation(near.size)[:64]]
    px = gx[pick] + rng.uniform(-0.25, 0.25, pick.size)
    py = gy[pick] + rng.uniform(-0.25, 0.25, pick.size)
    z = rng.uniform(1.7, 2.5, pick.size)
    clear = _line_of_sight(sc, px, py, z, t["cx"], t["cy"], min(t["height"] * 0.5, 6.0))
    order = np.concatenate([np.flatnonzero(clear), np.flatnonzero(~clear)])  # clear views first
    jitter = 10 + 20 * difficulty
    cams = []
    for q in order[:n]:
        heading = _bearing(t["cx"] - px[q], t["cy"] - py[q]) + rng.uniform(-jitter, jitter)
        cams.append(dict(x=float(px[q]), y=float(py[q]), z=float(z[q]), heading=float(heading % 360),
                         pitch=float(rng.uniform(2, 14)), fov=float(rng.uniform(80, 100)),
                         clear=bool(clear[q])))
    while len(cams) < n:           # tiny scenes: repeat a standpoint with a new heading
        c = dict(cams[len(cams) % max(len(cams), 1)]) if cams else dict(x=0.0, y=-30.0, z=2.0, pitch=5.0,
                                                                          fov=90.0, clear=False)
        c["heading"] = float((_bearing(t["cx"] - c["x"], t["cy"] - c["y"]) + rng.uniform(-30, 30)) % 360)
        cams.append(c)
    return cams


def _line_of_sight(sc: Scene, px, py, pz, tx, ty, tz, samples: int = 48):
    """True where nothing but the target stands between each camera and the target point."""
    f = np.linspace(0.0, 1.0, samples)[None, :]
    xs, ys, zs = px[:, None] + (tx - px[:, None]) * f, py[:, None] + (ty - py[:, None]) * f, \
        pz[:, None] + (tz - pz[:, None]) * f
    j, i = np.floor(xs / CELL + N / 2).astype(np.int64), np.floor(N / 2 - ys / CELL).astype(np.int64)
    ok = (i >= 0) & (i < N) & (j >= 0) & (j < N)
    i, j = np.clip(i, 0, N - 1), np.clip(j, 0, N - 1)
    own = np.isin(sc.bid[i, j], sc.target["boxes"])
    blocked = ok & ~own & (sc.height[i, j] > zs)
    return ~blocked.any(1)
