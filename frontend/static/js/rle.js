// COCO RLE in the browser: the compressed `counts` string of pycocotools <-> binary masks.
//
// A mask is an H x W image stored column-major (Fortran order) as alternating run lengths,
// starting with a run of zeros. pycocotools writes the runs as a string: each run (from the
// fourth on, as a difference to the run two places before) is cut into 5-bit groups, least
// significant first, each written as one character (value + 48) with bit 0x20 set while more
// groups follow; the last group's bit 0x10 carries the sign.
//
// Masks here are row-major Uint8Array(H * W) with 0 / 1 values, the layout of canvas ImageData.

/** Decode a compressed counts string into the list of run lengths. */
export function countsFromString(s) {
  const counts = [];
  let p = 0;
  while (p < s.length) {
    let x = 0;
    let k = 0;
    let more = true;
    while (more) {
      if (p >= s.length) throw new Error("RLE counts string ends in the middle of a number");
      const c = s.charCodeAt(p) - 48;
      if (c < 0 || c > 63) throw new Error(`RLE counts string has a bad character at ${p}`);
      x += (c & 0x1f) * 2 ** (5 * k);
      more = (c & 0x20) !== 0;
      p += 1;
      k += 1;
      if (!more && c & 0x10) x -= 2 ** (5 * k);
    }
    if (counts.length > 2) x += counts[counts.length - 2];
    counts.push(x);
  }
  return counts;
}

/** Encode run lengths as a compressed counts string (what pycocotools writes). */
export function countsToString(counts) {
  let out = "";
  for (let i = 0; i < counts.length; i += 1) {
    let x = counts[i];
    if (i > 2) x -= counts[i - 2];
    let more = true;
    while (more) {
      let c = ((x % 32) + 32) % 32;
      x = Math.floor(x / 32);
      more = c & 0x10 ? x !== -1 : x !== 0;
      if (more) c |= 0x20;
      out += String.fromCharCode(c + 48);
    }
  }
  return out;
}

/**
 * Decode a COCO RLE ({size: [H, W], counts: string | number[]}) into a row-major mask.
 * @returns {{height: number, width: number, data: Uint8Array}}
 */
export function decodeRle(rle) {
  if (!rle || !Array.isArray(rle.size) || rle.size.length !== 2) throw new Error("RLE needs size [H, W]");
  const [height, width] = rle.size;
  const counts = typeof rle.counts === "string" ? countsFromString(rle.counts) : rle.counts;
  const data = new Uint8Array(height * width);
  const total = height * width;
  let pos = 0; // column-major position
  let value = 0;
  for (const run of counts) {
    if (run < 0 || pos + run > total) throw new Error("RLE runs do not fit the mask size");
    if (value === 1) {
      for (let i = pos; i < pos + run; i += 1) {
        const x = Math.floor(i / height);
        const y = i - x * height;
        data[y * width + x] = 1;
      }
    }
    pos += run;
    value = 1 - value;
  }
  return { height, width, data };
}

/** Encode a row-major 0/1 mask into a COCO RLE with a compressed counts string. */
export function encodeMask(data, height, width) {
  if (data.length !== height * width) throw new Error("mask length does not match its size");
  const counts = [];
  let value = 0;
  let run = 0;
  for (let x = 0; x < width; x += 1) {
    for (let y = 0; y < height; y += 1) {
      const v = data[y * width + x] ? 1 : 0;
      if (v !== value) {
        counts.push(run);
        run = 0;
        value = v;
      }
      run += 1;
    }
  }
  counts.push(run);
  return { size: [height, width], counts: countsToString(counts) };
}

/** Foreground pixel count and tight xyxy box (exclusive ends) of a row-major mask. */
export function maskStats(data, height, width) {
  let area = 0;
  let x0 = width;
  let y0 = height;
  let x1 = -1;
  let y1 = -1;
  for (let y = 0; y < height; y += 1) {
    const row = y * width;
    for (let x = 0; x < width; x += 1) {
      if (data[row + x]) {
        area += 1;
        if (x < x0) x0 = x;
        if (x > x1) x1 = x;
        if (y < y0) y0 = y;
        if (y > y1) y1 = y;
      }
    }
  }
  return area ? { area, bbox_xyxy: [x0, y0, x1 + 1, y1 + 1] } : { area: 0, bbox_xyxy: null };
}
