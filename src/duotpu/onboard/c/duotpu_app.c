/*
 * duotpu board app in C: a build's cvimodel with its preprocessing and task head, for boards
 * without Python and for the lowest latency. `duotpu app BUILD --c` writes app_config.h (from
 * the same data as app.json) beside this file and compiles both against the SDK's
 * libcviruntime.so.
 *
 *   ./duotpu_app [--model FILE] [--count N] [--top K] [--save FILE] IMAGE...
 *
 * Images: binary PPM/PGM and uncompressed 8/24/32-bit BMP, JPEG and PNG when compiled with
 * stb_image (DUOTPU_STB_IMAGE: Debian's libstb-dev header, which `duotpu app --c` finds), or a
 * raw frame file of the input's exact size. The preprocessing equals the Python app's (and the
 * host's OpenCV) byte for byte: bilinear resize in OpenCV's 11-bit fixed point.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "duotpu_cvi.h"
#include "app_config.h"

#ifdef DUOTPU_STB_IMAGE /* JPEG and PNG through stb_image (a dependency, not a copy) */
#define STB_IMAGE_IMPLEMENTATION
#define STBI_ONLY_JPEG
#define STBI_ONLY_PNG
#define STBI_NO_STDIO
#include "stb_image.h"
#endif

#define FAIL(...) do { fprintf(stderr, "error: " __VA_ARGS__); fputc('\n', stderr); exit(2); } while (0)

static double now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

/* ---------------------------------------------------------------------------------------- */
/* images: BGR (c = 3) or gray (c = 1), uint8, rows top to bottom                            */
/* ---------------------------------------------------------------------------------------- */
typedef struct { int h, w, c; uint8_t *px; } Image;

static uint8_t *read_file(const char *path, size_t *n) {
  FILE *f = fopen(path, "rb");
  if (!f) FAIL("%s: cannot open it (missing or unreadable).", path);
  fseek(f, 0, SEEK_END);
  long len = ftell(f);
  fseek(f, 0, SEEK_SET);
  uint8_t *buf = malloc(len > 0 ? (size_t)len : 1);
  if (!buf || fread(buf, 1, (size_t)len, f) != (size_t)len) FAIL("%s: cannot read it.", path);
  fclose(f);
  *n = (size_t)len;
  return buf;
}

static size_t pnm_token(const uint8_t *d, size_t n, size_t pos, long *value) {
  for (;;) {
    while (pos < n && (d[pos] == ' ' || d[pos] == '\t' || d[pos] == '\n' || d[pos] == '\r')) pos++;
    if (pos < n && d[pos] == '#') { while (pos < n && d[pos] != '\n') pos++; continue; }
    break;
  }
  long v = 0; int any = 0;
  while (pos < n && d[pos] >= '0' && d[pos] <= '9') { v = v * 10 + (d[pos++] - '0'); any = 1; }
  if (!any) return 0;
  *value = v;
  return pos;
}

static int read_pnm(const char *path, const uint8_t *d, size_t n, Image *im) {
  if (n < 3 || d[0] != 'P' || (d[1] != '5' && d[1] != '6')) return 0;
  long w, h, top;
  size_t pos = 2;
  if (!(pos = pnm_token(d, n, pos, &w)) || !(pos = pnm_token(d, n, pos, &h)) ||
      !(pos = pnm_token(d, n, pos, &top)) || top != 255)
    FAIL("%s is not a readable 8-bit binary PPM/PGM.", path);
  pos++;
  im->w = (int)w; im->h = (int)h; im->c = d[1] == '6' ? 3 : 1;
  size_t need = (size_t)w * h * im->c;
  if (pos + need > n) FAIL("%s is truncated (%zu of %zu pixel bytes).", path, n - pos, need);
  im->px = malloc(need);
  for (size_t i = 0; i < (size_t)w * h; i++) {
    if (im->c == 3) {  /* RGB in the file, BGR in memory */
      im->px[3 * i] = d[pos + 3 * i + 2];
      im->px[3 * i + 1] = d[pos + 3 * i + 1];
      im->px[3 * i + 2] = d[pos + 3 * i];
    } else {
      im->px[i] = d[pos + i];
    }
  }
  return 1;
}

static uint32_t u32(const uint8_t *p) { return p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24; }

static int read_bmp(const char *path, const uint8_t *d, size_t n, Image *im) {
  if (n < 54 || d[0] != 'B' || d[1] != 'M') return 0;
  uint32_t off = u32(d + 10), hdr = u32(d + 14);
  int32_t w = (int32_t)u32(d + 18), h = (int32_t)u32(d + 22);
  int bits = d[28] | d[29] << 8;
  uint32_t comp = u32(d + 30);
  if ((comp != 0 && comp != 3) || (bits != 8 && bits != 24 && bits != 32))
    FAIL("%s: %d-bit BMP with compression %u; only uncompressed 8/24/32-bit BMP is read.", path, bits, comp);
  int flip = h > 0;
  if (h < 0) h = -h;
  size_t stride = ((size_t)w * bits / 8 + 3) & ~(size_t)3;
  if (off + stride * h > n) FAIL("%s is truncated.", path);
  const uint8_t *pal = d + 14 + hdr;
  int gray = 0;
  if (bits == 8) {
    gray = 1;
    for (int i = 0; i < 256 && 14 + hdr + 4 * i + 2 < off; i++)
      if (pal[4 * i] != pal[4 * i + 1] || pal[4 * i] != pal[4 * i + 2]) gray = 0;
  }
  im->w = w; im->h = h; im->c = gray ? 1 : 3;
  im->px = malloc((size_t)w * h * im->c);
  for (int y = 0; y < h; y++) {
    const uint8_t *row = d + off + stride * (size_t)(flip ? h - 1 - y : y);
    for (int x = 0; x < w; x++) {
      uint8_t *o = im->px + ((size_t)y * w + x) * im->c;
      if (bits == 8) {
        const uint8_t *c = pal + 4 * row[x];
        if (gray) o[0] = c[0]; else { o[0] = c[0]; o[1] = c[1]; o[2] = c[2]; }
      } else {
        const uint8_t *c = row + (size_t)x * (bits / 8);
        o[0] = c[0]; o[1] = c[1]; o[2] = c[2];
      }
    }
  }
  return 1;
}

static Image read_image(const char *path) {
  size_t n;
  uint8_t *d = read_file(path, &n);
  Image im = {0, 0, 0, NULL};
  if (!read_pnm(path, d, n, &im) && !read_bmp(path, d, n, &im)) {
#ifdef DUOTPU_STB_IMAGE
    int w, h, c;
    uint8_t *rgb = stbi_load_from_memory(d, (int)n, &w, &h, &c, 3);
    if (!rgb)
      FAIL("%s: not a PPM/PGM, BMP, JPEG or PNG image this app can read (%s).", path,
           stbi_failure_reason());
    im = (Image){h, w, 3, malloc((size_t)w * h * 3)};
    for (size_t i = 0; i < (size_t)w * h; i++) { /* RGB -> BGR */
      im.px[3 * i] = rgb[3 * i + 2];
      im.px[3 * i + 1] = rgb[3 * i + 1];
      im.px[3 * i + 2] = rgb[3 * i];
    }
    stbi_image_free(rgb);
#else
    FAIL("%s: not a PPM/PGM or BMP image. This app reads those (and raw frames); convert "
         "JPEG/PNG on the PC (e.g. `convert photo.jpg photo.ppm`), build the app with "
         "stb_image (apt-get install libstb-dev, then `duotpu app --c` again) or use the "
         "Python app with Pillow.", path);
#endif
  }
  free(d);
  return im;
}

/* OpenCV's BGR -> gray (COLOR_BGR2GRAY, 15-bit fixed point) */
static Image to_channels(Image im, int c) {
  if (im.c == c) return im;
  Image o = {im.h, im.w, c, malloc((size_t)im.h * im.w * c)};
  for (size_t i = 0; i < (size_t)im.h * im.w; i++) {
    if (c == 1) {
      const uint8_t *p = im.px + 3 * i;
      o.px[i] = (uint8_t)((p[0] * 3735 + p[1] * 19235 + p[2] * 9798 + (1 << 14)) >> 15);
    } else {
      o.px[3 * i] = o.px[3 * i + 1] = o.px[3 * i + 2] = im.px[i];
    }
  }
  free(im.px);
  return o;
}

/* ---------------------------------------------------------------------------------------- */
/* resize: OpenCV's INTER_LINEAR for uint8 (11-bit weights, its rounding, the 2x area case)   */
/* ---------------------------------------------------------------------------------------- */
static void weights(int src, int dst, int columns, int *i0, int *i1, int *w0, int *w1) {
  double scale = 1.0 / ((double)dst / src);
  for (int d = 0; d < dst; d++) {
    float f = (float)((d + 0.5) * scale - 0.5);
    int s = (int)floorf(f);
    float frac = f - (float)s;
    if (columns) {
      if (s < 0) { frac = 0; s = 0; }
      if (s >= src - 1) { frac = 0; s = src - 1; }
    }
    w0[d] = (int)lrintf((1.0f - frac) * 2048.0f);
    w1[d] = (int)lrintf(frac * 2048.0f);
    int a = s < 0 ? 0 : (s > src - 1 ? src - 1 : s);
    int b = s + 1 < 0 ? 0 : (s + 1 > src - 1 ? src - 1 : s + 1);
    i0[d] = a; i1[d] = b;
  }
}

static Image resize(Image im, int w, int h) {
  Image o = {h, w, im.c, malloc((size_t)w * h * im.c)};
  int c = im.c;
  if (im.h == h && im.w == w) { memcpy(o.px, im.px, (size_t)w * h * c); return o; }
  if (im.h == 2 * h && im.w == 2 * w) {
    for (int y = 0; y < h; y++)
      for (int x = 0; x < w; x++)
        for (int k = 0; k < c; k++) {
          const uint8_t *p = im.px + ((size_t)(2 * y) * im.w + 2 * x) * c + k;
          int s = p[0] + p[c] + p[(size_t)im.w * c] + p[(size_t)im.w * c + c];
          o.px[((size_t)y * w + x) * c + k] = (uint8_t)((s + 2) >> 2);
        }
    return o;
  }
  int *x0 = malloc(sizeof(int) * w * 4), *x1 = x0 + w, *a0 = x0 + 2 * w, *a1 = x0 + 3 * w;
  int *y0 = malloc(sizeof(int) * h * 4), *y1 = y0 + h, *b0 = y0 + 2 * h, *b1 = y0 + 3 * h;
  weights(im.w, w, 1, x0, x1, a0, a1);
  weights(im.h, h, 0, y0, y1, b0, b1);
  for (int y = 0; y < h; y++) {
    const uint8_t *r0 = im.px + (size_t)y0[y] * im.w * c, *r1 = im.px + (size_t)y1[y] * im.w * c;
    for (int x = 0; x < w; x++)
      for (int k = 0; k < c; k++) {
        int64_t s0 = (int64_t)r0[x0[x] * c + k] * a0[x] + (int64_t)r0[x1[x] * c + k] * a1[x];
        int64_t s1 = (int64_t)r1[x0[x] * c + k] * a0[x] + (int64_t)r1[x1[x] * c + k] * a1[x];
        int64_t v = (((b0[y] * (s0 >> 4)) >> 16) + ((b1[y] * (s1 >> 4)) >> 16) + 2) >> 2;
        o.px[((size_t)y * w + x) * c + k] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
      }
  }
  free(x0); free(y0);
  return o;
}

/* The recipe's resize mode to (PRE_RESIZE_H, PRE_RESIZE_W); the image's place for boxes. */
typedef struct { float sx, sy, ox, oy; } Place;

static Image fit(Image im, Place *pl) {
  int h = PRE_RESIZE_H, w = PRE_RESIZE_W;
  Image r;
  if (PRE_MODE == MODE_STRETCH) {
    r = resize(im, w, h);
  } else if (PRE_MODE == MODE_LETTERBOX || PRE_MODE == MODE_TEXT_LINE) {
    double s = fmin((double)w / im.w, (double)h / im.h);
    int rw = (int)(im.w * s), rh = (int)(im.h * s);
    Image t = resize(im, rw, rh);
    r = (Image){h, w, im.c, malloc((size_t)w * h * im.c)};
    memset(r.px, PRE_PAD, (size_t)w * h * im.c);
    /* text line: the image at the top left, padded on the right and below */
    int oy = PRE_MODE == MODE_LETTERBOX ? (h - rh) / 2 : 0;
    int ox = PRE_MODE == MODE_LETTERBOX ? (w - rw) / 2 : 0;
    for (int y = 0; y < rh; y++)
      memcpy(r.px + ((size_t)(y + oy) * w + ox) * im.c, t.px + (size_t)y * rw * im.c, (size_t)rw * im.c);
    free(t.px);
  } else {  /* short side, then the centre of the long one */
    double s = fmax((double)w / im.w, (double)h / im.h);
    int rw = im.w * s >= w ? (int)(im.w * s) : w, rh = im.h * s >= h ? (int)(im.h * s) : h;
    Image t = resize(im, rw, rh);
    int oy = (rh - h) / 2 > 0 ? (rh - h) / 2 : 0, ox = (rw - w) / 2 > 0 ? (rw - w) / 2 : 0;
    r = (Image){h, w, im.c, malloc((size_t)w * h * im.c)};
    for (int y = 0; y < h; y++)
      memcpy(r.px + (size_t)y * w * im.c, t.px + ((size_t)(y + oy) * rw + ox) * im.c, (size_t)w * im.c);
    free(t.px);
  }
  if (pl) {  /* as duotpu.onboard.heads.placement */
    double ih = im.h, iw = im.w, rh = PRE_RESIZE_H, rw = PRE_RESIZE_W;
    if (PRE_MODE == MODE_LETTERBOX || PRE_MODE == MODE_TEXT_LINE) {
      double s = fmin(rw / iw, rh / ih);
      pl->sx = pl->sy = (float)s;
      pl->ox = PRE_MODE == MODE_LETTERBOX ? (float)((PRE_RESIZE_W - (int)(iw * s)) / 2) : 0;
      pl->oy = PRE_MODE == MODE_LETTERBOX ? (float)((PRE_RESIZE_H - (int)(ih * s)) / 2) : 0;
    } else if (PRE_MODE == MODE_STRETCH) {
      pl->sx = (float)(rw / iw); pl->sy = (float)(rh / ih); pl->ox = pl->oy = 0;
    } else {
      double s = fmax(rw / iw, rh / ih);
      int w2 = iw * s >= rw ? (int)(iw * s) : PRE_RESIZE_W, h2 = ih * s >= rh ? (int)(ih * s) : PRE_RESIZE_H;
      pl->sx = (float)(w2 / iw); pl->sy = (float)(h2 / ih);
      pl->ox = (float)-((w2 - PRE_RESIZE_W) / 2 > 0 ? (w2 - PRE_RESIZE_W) / 2 : 0);
      pl->oy = (float)-((h2 - PRE_RESIZE_H) / 2 > 0 ? (h2 - PRE_RESIZE_H) / 2 : 0);
    }
    pl->ox -= PRE_RESIZE_W / 2 - NET_W / 2;
    pl->oy -= PRE_RESIZE_H / 2 - NET_H / 2;
  }
  return r;
}

/* The input tensor's bytes from a fitted image: centre crop to the net size, then either the
 * uint8 frame of a fused-preprocess model or float32 (pixel - mean) * scale, quantized as the
 * tensor wants. */
static void fill_input(CVI_TENSOR *t, Image im) {
  int C = FUSED ? (FUSED_GRAY ? 1 : 3) : NET_C, H = NET_H, W = NET_W;
  int y0 = im.h / 2 - H / 2, x0 = im.w / 2 - W / 2;
  size_t plane = (size_t)H * W, count = CVI_NN_TensorCount(t), per = plane * C;
  uint8_t *dst = CVI_NN_TensorPtr(t);
  float qs = CVI_NN_TensorQuantScale(t);
  int zp = CVI_NN_TensorQuantZeroPoint(t);
  for (size_t b = 0; b < count / per; b++)
    for (int c = 0; c < C; c++)
      for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) {
          int src_c = (C == 3 && (FUSED ? FUSED_RGB : PRE_RGB)) ? 2 - c : c;
          uint8_t p = im.px[((size_t)(y + y0) * im.w + (x + x0)) * im.c + src_c];
          size_t at = FUSED_PACKED ? b * per + ((size_t)y * W + x) * C + c
                                   : b * per + c * plane + (size_t)y * W + x;
          if (FUSED) { dst[at] = p; continue; }
          float v = ((float)p - PRE_MEAN[c]) * PRE_SCALE[c];
          if (t->fmt == CVI_FMT_FP32) {
            ((float *)dst)[at] = v;
          } else if (t->fmt == CVI_FMT_BF16) {
            uint32_t u; memcpy(&u, &v, 4);
            ((uint16_t *)dst)[at] = (uint16_t)(u >> 16);
          } else {
            float q = v * qs + (float)zp;
            q = copysignf(floorf(fabsf(q) + 0.5f), q);
            int lo = t->fmt == CVI_FMT_INT8 ? -128 : 0, hi = t->fmt == CVI_FMT_INT8 ? 127 : 255;
            int qi = q < lo ? lo : q > hi ? hi : (int)q;
            if (t->fmt == CVI_FMT_INT8) ((int8_t *)dst)[at] = (int8_t)qi; else dst[at] = (uint8_t)qi;
          }
        }
}

/* An output tensor as float32 (INT8 dequantized, BF16 widened). */
static float *output_f32(CVI_TENSOR *t) {
  size_t n = CVI_NN_TensorCount(t);
  float *o = malloc(sizeof(float) * (n ? n : 1));
  const uint8_t *p = CVI_NN_TensorPtr(t);
  float qs = CVI_NN_TensorQuantScale(t);
  int zp = CVI_NN_TensorQuantZeroPoint(t);
  for (size_t i = 0; i < n; i++) {
    switch (t->fmt) {
      case CVI_FMT_FP32: o[i] = ((const float *)p)[i]; break;
      case CVI_FMT_BF16: { uint32_t u = (uint32_t)((const uint16_t *)p)[i] << 16; memcpy(&o[i], &u, 4); break; }
      case CVI_FMT_INT8: o[i] = ((float)((const int8_t *)p)[i] - zp) * qs; break;
      case CVI_FMT_UINT8: o[i] = ((float)p[i] - zp) * qs; break;
      default: o[i] = 0;
    }
  }
  return o;
}

/* ---------------------------------------------------------------------------------------- */
/* heads                                                                                     */
/* ---------------------------------------------------------------------------------------- */
static void classify(const float *s, int n, int k) {
  double *p = malloc(sizeof(double) * n), sum = 0, mx = -INFINITY;
  int probs = 1;
  for (int i = 0; i < n; i++) { if (s[i] < 0) probs = 0; sum += s[i]; if (s[i] > mx) mx = s[i]; }
  if (!probs || fabs(sum - 1.0) > 1e-3 + 1e-5) {
    sum = 0;
    for (int i = 0; i < n; i++) { p[i] = exp(s[i] - mx); sum += p[i]; }
    for (int i = 0; i < n; i++) p[i] /= sum;
  } else {
    for (int i = 0; i < n; i++) p[i] = s[i];
  }
  for (int r = 0; r < k && r < n; r++) {
    int best = -1;  /* the largest left; ties: the lower index (as numpy's stable argsort) */
    for (int i = 0; i < n; i++)
      if (p[i] >= -1 && (best < 0 || p[i] > p[best])) best = i;
    if (N_LABELS > best) printf("%s%s %.6f", r ? ", " : "", LABELS[best], p[best]);
    else printf("%sclass %d %.6f", r ? ", " : "", best, p[best]);
    p[best] = -2;  /* taken */
  }
  free(p);
}

#define DET_KP (DET_NKPS ? DET_NKPS : 1)
typedef struct { float x1, y1, x2, y2, score; int cls; float kp[2 * DET_KP]; } Box;

static int by_score(const void *a, const void *b) {
  float d = ((const Box *)b)->score - ((const Box *)a)->score;
  return d > 0 ? 1 : d < 0 ? -1 : (((const Box *)a)->cls - ((const Box *)b)->cls);
}

static float sigmoidf(float v) { return 1.0f / (1.0f + expf(-v)); }

/* detector decode (YOLOv8 / PicoDet DFL, YOLOv5 anchors) + per-class NMS (as
   duotpu.onboard.heads), boxes back on the image. */
static int detect(float **maps, Place pl, int ih, int iw, Box *out, int max_out) {
  int cap = 0;
  /* a map has ceil(size / stride) cells a side (PicoDet's 800 / 64 gives 13) */
  for (int i = 0; i < DET_NSTRIDES; i++) {
    int s = DET_STRIDES[i];
    cap += ((NET_H + s - 1) / s) * ((NET_W + s - 1) / s) * (DET_KIND ? DET_NA : 1) * (DET_MULTI_LABEL ? DET_NC : 1);
  }
  Box *cand = malloc(sizeof(Box) * (cap ? cap : 1));
  int n = 0;
  for (int i = 0; i < DET_NSTRIDES; i++) {
    int s = DET_STRIDES[i], h = (NET_H + s - 1) / s, w = (NET_W + s - 1) / s, hw = h * w;
    for (int a = 0; a < (DET_KIND ? DET_NA : 1); a++)
      for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
          int cell = y * w + x, best = 0;
          float bs = -1, cx, cy, bw, bh, kp[2 * DET_KP] = {0};
          if (DET_KIND == 0) {  /* anchor free, DFL */
            /* two maps per scale, or one holding both (DET_SHARED 1: classes first, 2: boxes first) */
            const float *box = DET_SHARED ? maps[i] + (DET_SHARED == 1 ? (size_t)DET_NC * hw : 0) : maps[2 * i];
            const float *cls = DET_SHARED ? maps[i] + (DET_SHARED == 2 ? (size_t)4 * DET_REG_MAX * hw : 0) : maps[2 * i + 1];
            float dist[4];
            for (int side = 0; side < 4; side++) {
              if (DET_REG_MAX > 1) {
                float mx = -INFINITY, sum = 0, acc = 0;
                for (int k = 0; k < DET_REG_MAX; k++) { float v = box[(side * DET_REG_MAX + k) * hw + cell]; if (v > mx) mx = v; }
                for (int k = 0; k < DET_REG_MAX; k++) { float e = expf(box[(side * DET_REG_MAX + k) * hw + cell] - mx); sum += e; acc += e * k; }
                dist[side] = acc / sum;
              } else {
                dist[side] = box[side * hw + cell];
              }
            }
            float ax = x + 0.5f, ay = y + 0.5f;
            float x1 = ax - dist[0], y1 = ay - dist[1], x2 = ax + dist[2], y2 = ay + dist[3];
            cx = (x1 + x2) / 2 * s; cy = (y1 + y2) / 2 * s; bw = (x2 - x1) * s; bh = (y2 - y1) * s;
            for (int c = 0; c < DET_NC; c++) {
              float v = sigmoidf(cls[c * hw + cell]);
              if (DET_MULTI_LABEL && v > DET_CONF) {  /* a candidate per class (PaddleDetection) */
                float bx1 = cx - bw / 2, by1 = cy - bh / 2;
                cand[n++] = (Box){bx1, by1, bx1 + bw, by1 + bh, v, c, {0}};
              }
              if (v > bs) { bs = v; best = c; }
            }
            if (DET_MULTI_LABEL) bs = -1;
          } else if (DET_KIND == 3) {  /* SCRFD: per anchor a score, box distances, landmarks */
            const int step = DET_NKPS ? 3 : 2;
            const float *sc = maps[step * i], *box = maps[step * i + 1];
            float px = (float)x * s, py = (float)y * s, d[4];
            for (int k = 0; k < 4; k++) d[k] = box[(a * 4 + k) * hw + cell] * s;
            cx = px + (d[2] - d[0]) / 2; cy = py + (d[3] - d[1]) / 2; bw = d[0] + d[2]; bh = d[1] + d[3];
            if (DET_NKPS) {
              const float *km = maps[step * i + 2];
              for (int k = 0; k < 2 * DET_NKPS; k++) kp[k] = (k % 2 ? py : px) + km[(a * 2 * DET_NKPS + k) * hw + cell] * s;
            }
            bs = sigmoidf(sc[a * hw + cell]); best = 0;
          } else if (DET_KIND == 2) {  /* YOLOX: box (4), objectness (1), classes per scale */
            const float *box = maps[3 * i], *objm = maps[3 * i + 1], *cls = maps[3 * i + 2];
            cx = (box[cell] + x) * s; cy = (box[hw + cell] + y) * s;
            bw = expf(box[2 * hw + cell]) * s; bh = expf(box[3 * hw + cell]) * s;
            float obj = sigmoidf(objm[cell]);
            for (int c = 0; c < DET_NC; c++) { float v = sigmoidf(cls[c * hw + cell]) * obj; if (v > bs) { bs = v; best = c; } }
          } else {  /* anchor based (YOLOv5) */
            const float *m = maps[i];
            const float *p0 = m + (size_t)a * (5 + DET_NC) * hw + cell;
            float px = sigmoidf(p0[0]), py = sigmoidf(p0[hw]), pw = sigmoidf(p0[2 * hw]), ph = sigmoidf(p0[3 * hw]);
            float obj = sigmoidf(p0[4 * hw]);
            cx = (px * 2 + (x - 0.5f)) * s; cy = (py * 2 + (y - 0.5f)) * s;
            bw = (pw * 2) * (pw * 2) * DET_ANCHORS[i][2 * a]; bh = (ph * 2) * (ph * 2) * DET_ANCHORS[i][2 * a + 1];
            for (int c = 0; c < DET_NC; c++) { float v = sigmoidf(p0[(5 + c) * hw]) * obj; if (v > bs) { bs = v; best = c; } }
          }
          if (bs > DET_CONF) {
            float x1 = cx - bw / 2, y1 = cy - bh / 2;
            cand[n] = (Box){x1, y1, x1 + bw, y1 + bh, bs, best, {0}};
            memcpy(cand[n++].kp, kp, sizeof kp);
          }
        }
  }
  qsort(cand, n, sizeof(Box), by_score);
  int kept = 0;
  for (int i = 0; i < n && kept < max_out && kept < DET_MAX_DET; i++) {
    Box *b = &cand[i];
    int ok = 1;
    for (int j = 0; j < kept && ok; j++) {
      Box *k = &out[j];
      if (k->cls != b->cls) continue;
      double iw_ = fmin(b->x2, k->x2) - fmax(b->x1, k->x1), ih_ = fmin(b->y2, k->y2) - fmax(b->y1, k->y1);
      double inter = iw_ > 0 && ih_ > 0 ? iw_ * ih_ : 0;
      double uni = (double)(b->x2 - b->x1) * (b->y2 - b->y1) + (double)(k->x2 - k->x1) * (k->y2 - k->y1) - inter;
      if (uni > 0 && inter / uni > DET_IOU) ok = 0;
    }
    if (ok) out[kept++] = *b;
  }
  for (int j = 0; j < kept; j++) {  /* the kept boxes are compared in network pixels first */
    Box *b = &out[j];
    b->x1 = fminf(fmaxf((b->x1 - pl.ox) / pl.sx, 0), iw); b->x2 = fminf(fmaxf((b->x2 - pl.ox) / pl.sx, 0), iw);
    b->y1 = fminf(fmaxf((b->y1 - pl.oy) / pl.sy, 0), ih); b->y2 = fminf(fmaxf((b->y2 - pl.oy) / pl.sy, 0), ih);
    for (int k = 0; k < 2 * DET_NKPS; k++) b->kp[k] = k % 2 ? (b->kp[k] - pl.oy) / pl.sy : (b->kp[k] - pl.ox) / pl.sx;
  }
  free(cand);
  return kept;
}

static int name_matches(const char *have, const char *want) {
  size_t n = strlen(want);
  return strcmp(have, want) == 0 || (strncmp(have, want, n) == 0 && have[n] == '_');
}

/* ---------------------------------------------------------------------------------------- */
int main(int argc, char **argv) {
  const char *model_path = NULL, *save = NULL;
  int count = 0, top = 5, nimg = 0;
  const char **imgs = malloc(sizeof(char *) * (argc > 1 ? argc : 1));
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--model") && i + 1 < argc) model_path = argv[++i];
    else if (!strcmp(argv[i], "--count") && i + 1 < argc) count = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--top") && i + 1 < argc) top = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--save") && i + 1 < argc) save = argv[++i];
    else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
      printf("usage: %s [--model FILE] [--count N] [--top K] [--save FILE] IMAGE...\n"
             "%s (%s): PPM/PGM/BMP images or raw frames in, answers out.\n", argv[0], APP_NAME, APP_TASK_NAME);
      return 0;
    } else if (argv[i][0] == '-' && argv[i][1] == '-') {
      FAIL("unknown option %s (see --help).", argv[i]);
    } else {
      imgs[nimg++] = argv[i];
    }
  }
  if (!nimg) FAIL("give images (see --help).");
  char buf[4096];
  if (!model_path) {  /* the app's model, beside the executable */
    const char *slash = strrchr(argv[0], '/');
    snprintf(buf, sizeof buf, "%.*s%s", slash ? (int)(slash - argv[0] + 1) : 0, argv[0], APP_MODEL);
    model_path = buf;
  }
  CVI_MODEL_HANDLE model = NULL;
  double t0 = now_ms();
  int rc = CVI_NN_RegisterModel(model_path, &model);
  if (rc != 0) {
    fprintf(stderr, "error: the runtime refused the model %s (code %#x): a model for another chip, "
            "from a newer compiler than the board's runtime (update the SDK), a damaged file, or "
            "not enough ION memory.\n", model_path, (unsigned)rc);
    return 1;
  }
  CVI_TENSOR *in, *out;
  int32_t nin, nout;
  if (CVI_NN_GetInputOutputTensors(model, &in, &nin, &out, &nout) != 0) FAIL("cannot read the model's tensors.");
  double t_open = now_ms() - t0;
  FILE *sf = save ? fopen(save, "wb") : NULL;
  if (save && !sf) FAIL("cannot write %s.", save);
  printf("model %s: %d input(s), %d output(s), opened in %.1f ms\n", model_path, nin, nout, t_open);
  for (int a = 0; a < nimg; a++) {
    const char *path = imgs[a];
    double ta = now_ms();
    Place pl = {1, 1, 0, 0};
    int ih = NET_H, iw = NET_W;
    size_t len = strlen(path);
    if (len > 4 && (!strcmp(path + len - 4, ".raw") || !strcmp(path + len - 4, ".yuv") ||
                    !strcmp(path + len - 5, ".nv21") || !strcmp(path + len - 5, ".nv12"))) {
      size_t n;
      uint8_t *d = read_file(path, &n);
      if (n != CVI_NN_TensorSize(&in[0])) FAIL("%s holds %zu bytes; the model's input takes %zu.", path, n, CVI_NN_TensorSize(&in[0]));
      memcpy(CVI_NN_TensorPtr(&in[0]), d, n);
      free(d);
    } else {
      Image im = to_channels(read_image(path), (FUSED ? FUSED_GRAY : NET_C == 1) ? 1 : 3);
      ih = im.h; iw = im.w;
      Image fitted = fit(im, &pl);
      fill_input(&in[0], fitted);
      free(im.px); free(fitted.px);
    }
    double tb = now_ms();
    if (CVI_NN_Forward(model, in, nin, out, nout) != 0) { fprintf(stderr, "error: the TPU run failed on %s.\n", path); return 1; }
    double tc = now_ms();
    float **f = malloc(sizeof(float *) * nout);
    for (int o = 0; o < nout; o++) {
      f[o] = output_f32(&out[o]);
      if (sf) fwrite(f[o], sizeof(float), CVI_NN_TensorCount(&out[o]), sf);
    }
    printf("%s: ", path);
    if (APP_TASK == TASK_CLASSIFY) {
      classify(f[0], (int)(CVI_NN_TensorCount(&out[0]) / (in[0].shape.dim[0] ? in[0].shape.dim[0] : 1)), top);
    } else if (APP_TASK == TASK_DETECT) {
      float *maps[3 * 8] = {0};
      for (int m = 0; m < DET_NMAPS; m++) {
        maps[m] = f[m < nout ? m : 0];
        for (int o = 0; o < nout; o++) if (name_matches(CVI_NN_TensorName(&out[o]), DET_OUTPUTS[m])) maps[m] = f[o];
      }
      Box boxes[512];
      int nb = detect(maps, pl, ih, iw, boxes, 512);
      printf("%d objects", nb);
      for (int k = 0; k < nb; k++) {
        printf("%s%s %.4f [%.1f, %.1f, %.1f, %.1f]", k ? "; " : ": ", boxes[k].cls < N_LABELS ? LABELS[boxes[k].cls] : "?",
               boxes[k].score, boxes[k].x1, boxes[k].y1, boxes[k].x2, boxes[k].y2);
        for (int q = 0; q < 2 * DET_NKPS; q++) printf("%s%.1f%s", q ? ", " : " landmarks [", boxes[k].kp[q], q == 2 * DET_NKPS - 1 ? "]" : "");
      }
    } else {
      for (int o = 0; o < nout; o++) {
        size_t n = CVI_NN_TensorCount(&out[o]);
        double s = 0;
        for (size_t i = 0; i < n; i++) s += f[o][i];
        printf("%s%s mean %.6g", o ? ", " : "", CVI_NN_TensorName(&out[o]), n ? s / n : 0.0);
      }
    }
    double td = now_ms();
    printf("  [pre %.1f ms, tpu %.1f ms, post %.1f ms]\n", tb - ta, tc - tb, td - tc);
    for (int o = 0; o < nout; o++) free(f[o]);
    free(f);
  }
  if (sf) fclose(sf);
  if (count > 0) {
    double sum = 0, mn = 1e30, mx = 0;
    for (int i = 0; i < count; i++) {
      double t = now_ms();
      CVI_NN_Forward(model, in, nin, out, nout);
      t = now_ms() - t;
      sum += t; if (t < mn) mn = t; if (t > mx) mx = t;
    }
    printf("tpu x%d: mean %.2f ms, min %.2f, max %.2f (%.1f fps)\n", count, sum / count, mn, mx, 1000.0 * count / sum);
  }
  CVI_NN_CleanupModel(model);
  return 0;
}
