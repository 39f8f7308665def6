(text) => {
  // Applies an overlay message (figures.overlay_payload) to the map already drawn; see
  // figures.py. Marks (rings, the frame marker) are painted on a canvas over a 2-D plot area,
  // so a new selection never makes Plotly redraw the points; the other overlay traces go to
  // Plotly.react, and only when they changed (msg.plotted vs the drawn layout.meta.plotted).
  const w = window;
  if (text) {
    try { w.__dvOverlay = JSON.parse(text); } catch (err) { return; }
  }
  const plot = () => document.querySelector('#umap-plot .js-plotly-plot');
  // the rule of figures.is_mark
  const isMark = t => t.meta === 'ring'
    || (typeof t.meta === 'string' && t.meta.startsWith('traj:') && t.name === 'frame');
  const flat = gd => !!(gd._fullLayout && gd._fullLayout.xaxis && !gd._fullLayout.scene);

  function marksOf(gd) {
    const msg = w.__dvOverlay;
    const meta = (gd.layout && gd.layout.meta) || {};
    if (!msg || meta.base !== msg.base || !flat(gd)) return [];
    return msg.traces.filter(isMark);
  }

  function canvasOf(gd) {
    let cv = gd.__dvCanvas;
    const box = gd.querySelector('.svg-container');
    if (!box) return null;
    if (!cv || cv.parentNode !== box) {
      cv = document.createElement('canvas');
      cv.className = 'dv-marks';
      cv.style.cssText = 'position:absolute;pointer-events:none;';
      const layers = box.querySelectorAll(':scope > .main-svg');  // over the points, under the hover labels
      box.insertBefore(cv, layers.length > 1 ? layers[layers.length - 1] : null);
      gd.__dvCanvas = cv;
    }
    return cv;
  }

  // one mark drawn once on a small canvas (device pixels), stamped on every point: stroking one
  // path of 10⁴–10⁵ circles costs the software rasterizer seconds, stamping a bitmap does not
  // a mark's ring as the pixels it covers: offsets from its centre and their non-premultiplied
  // RGBA (drawn once by the canvas, anti-aliased, then copied per point by composite())
  function sprite(m, ratio) {
    const r = (m.size || 10) / 2, lw = (m.line && m.line.width) || 2;
    const color = (m.line && m.line.color) || m.color || '#000';
    const half = Math.ceil((r + lw) * ratio) + 1, side = 2 * half;
    const cv = document.createElement('canvas');
    cv.width = cv.height = side;
    const ctx = cv.getContext('2d');
    ctx.setTransform(ratio, 0, 0, ratio, half, half);
    ctx.beginPath();
    if (String(m.symbol).startsWith('square')) ctx.rect(-r, -r, 2 * r, 2 * r);
    else ctx.arc(0, 0, r, 0, 2 * Math.PI);
    ctx.lineWidth = lw;
    ctx.strokeStyle = color;
    ctx.stroke();
    const px = ctx.getImageData(0, 0, side, side).data, dx = [], dy = [], rgba = [];
    for (let y = 0; y < side; y++) {
      for (let x = 0; x < side; x++) {
        const o = 4 * (y * side + x);
        if (px[o + 3] === 0) continue;
        dx.push(x - half); dy.push(y - half);
        rgba.push(px[o], px[o + 1], px[o + 2], px[o + 3]);
      }
    }
    return {dx: Int32Array.from(dx), dy: Int32Array.from(dy), rgba: Uint8Array.from(rgba), r: r};
  }

  // paint the sprite at pixel (cx, cy) of out (an ImageData's RGBA, w x h), over what is there
  // ("source-over" on non-premultiplied colours): a few dozen writes per ring, where a canvas
  // drawImage per ring cost ~35 us on a software-rendered canvas (0.7 s for 20k rings)
  function composite(out, w, h, stamp, cx, cy) {
    const dx = stamp.dx, dy = stamp.dy, c = stamp.rgba;
    for (let k = 0; k < dx.length; k++) {
      const x = cx + dx[k], y = cy + dy[k];
      if (x < 0 || y < 0 || x >= w || y >= h) continue;
      const o = 4 * (y * w + x), sa = c[4 * k + 3], da = out[o + 3];
      if (sa === 255 || da === 0) {
        out[o] = c[4 * k]; out[o + 1] = c[4 * k + 1]; out[o + 2] = c[4 * k + 2]; out[o + 3] = sa;
        continue;
      }
      const keep = da * (255 - sa) / 255, a = sa + keep;
      out[o] = (c[4 * k] * sa + out[o] * keep) / a;
      out[o + 1] = (c[4 * k + 1] * sa + out[o + 1] * keep) / a;
      out[o + 2] = (c[4 * k + 2] * sa + out[o + 2] * keep) / a;
      out[o + 3] = a;
    }
  }

  // map positions of the drawn base's points by index (x at 2i, y at 2i + 1): a ring in the message
  // names its points (customdata) without their x/y; built once per base
  function positions(gd) {
    const key = (gd.layout.meta || {}).base;
    if (gd.__dvXY && gd.__dvXY.key === key && gd.__dvXY.data === gd._fullData) return gd.__dvXY.xy;
    const pts = gd._fullData.filter(t => t.meta === 'pts');
    let top = -1;
    for (const t of pts) for (let j = 0; j < t.customdata.length; j++) top = Math.max(top, t.customdata[j]);
    const xy = new Float64Array(2 * (top + 1)).fill(NaN);
    for (const t of pts) {
      for (let j = 0; j < t.customdata.length; j++) {
        const i = t.customdata[j];
        xy[2 * i] = t.x[j];
        xy[2 * i + 1] = t.y[j];
      }
    }
    gd.__dvXY = {key: key, data: gd._fullData, xy: xy};
    return xy;
  }

  // a ring sent without x/y gets them from the base (once per message)
  function located(gd, t) {
    if (t.x) return;
    const xy = positions(gd), ids = t.customdata || [];
    t.x = new Float64Array(ids.length);
    t.y = new Float64Array(ids.length);
    for (let i = 0; i < ids.length; i++) {
      t.x[i] = 2 * ids[i] + 1 < xy.length ? xy[2 * ids[i]] : NaN;
      t.y[i] = 2 * ids[i] + 1 < xy.length ? xy[2 * ids[i] + 1] : NaN;
    }
  }

  // paint the marks at the axes' current ranges; then gd.__dvMarks is {name: point indices} and
  // gd.__dvMarkTraces the mark traces painted
  function drawMarks(gd) {
    const cv = canvasOf(gd);
    if (!cv) return;
    cv.style.display = flat(gd) ? '' : 'none';
    gd.__dvMarks = {};
    gd.__dvMarkTraces = [];
    if (!flat(gd)) return;
    const marks = marksOf(gd);
    const fl = gd._fullLayout, xa = fl.xaxis, ya = fl.yaxis;
    const ratio = w.devicePixelRatio || 1;
    const width = Math.max(1, Math.round(xa._length)), height = Math.max(1, Math.round(ya._length));
    Object.assign(cv.style, {left: xa._offset + 'px', top: ya._offset + 'px', width: width + 'px',
                             height: height + 'px'});
    if (cv.width !== Math.round(width * ratio) || cv.height !== Math.round(height * ratio)) {
      cv.width = Math.round(width * ratio);
      cv.height = Math.round(height * ratio);
    }
    const ctx = cv.getContext('2d');
    const image = ctx.createImageData(cv.width, cv.height);  // transparent
    const drawn = {};
    for (const t of marks) {
      const stamp = sprite(t.marker || {}, ratio), r = stamp.r;
      located(gd, t);
      // rings of one trace centred on the same pixel look like one: stamp each centre once (a box on a
      // dense 1M-point map holds ~9000 points over ~500 pixels)
      const stamped = new Uint8Array(cv.width * cv.height), pad = Math.ceil(r * ratio);
      for (let i = 0; i < t.x.length; i++) {
        const cx = Math.round(xa.l2p(t.x[i]) * ratio), cy = Math.round(ya.l2p(t.y[i]) * ratio);
        if (!(cx >= -pad && cy >= -pad && cx < cv.width + pad && cy < cv.height + pad)) continue;
        const inside = cx >= 0 && cy >= 0 && cx < cv.width && cy < cv.height;
        if (inside && stamped[cy * cv.width + cx]) continue;
        if (inside) stamped[cy * cv.width + cx] = 1;
        composite(image.data, cv.width, cv.height, stamp, cx, cy);
      }
      drawn[t.name] = (drawn[t.name] || []).concat(t.customdata || []);
    }
    ctx.putImageData(image, 0, 0);
    gd.__dvMarks = drawn;
    gd.__dvMarkTraces = marks;
  }

  function watch(gd) {
    if (gd.__dvWatch) return;
    gd.__dvWatch = true;
    const redraw = () => drawMarks(gd);
    gd.on('plotly_afterplot', () => { redraw(); setTimeout(apply, 0); });
    gd.on('plotly_relayout', redraw);
    gd.on('plotly_relayouting', redraw);
    w.addEventListener('resize', () => requestAnimationFrame(redraw));
  }

  function apply() {
    const msg = w.__dvOverlay;
    const gd = plot();
    if (!msg || !gd || !w.Plotly || !gd.layout || !Array.isArray(gd.data) || !gd._fullLayout) return false;
    watch(gd);
    const meta = gd.layout.meta || {};
    if (meta.base !== msg.base || gd.__dvBusy) { drawMarks(gd); return true; }
    if (meta.plotted === msg.plotted) { drawMarks(gd); return true; }
    gd.__dvBusy = true;
    const twoD = flat(gd);
    const base = gd.data.filter(t => t.meta === 'pts');
    const extra = msg.traces.filter(t => !(twoD && isMark(t)));
    const layout = Object.assign({}, gd.layout, {meta: {base: msg.base, overlay: msg.id, plotted: msg.plotted}});
    layout.title = Object.assign({}, gd.layout.title || {}, {text: msg.title});
    const done = () => { gd.__dvBusy = false; setTimeout(apply, 0); };
    w.Plotly.react(gd, base.concat(extra), layout).then(() => { drawMarks(gd); done(); }, done);
    return true;
  }

  if (!apply()) {
    let tries = 0;
    const timer = setInterval(() => { if (apply() || ++tries > 200) clearInterval(timer); }, 50);
  }
}
