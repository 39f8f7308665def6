// Box and lasso selection on the 2-D map, drawn by the page instead of Plotly (part of the plot
// bridge, layout.PLOTLY_HANDLER_JS). Plotly's own selection tests every point, builds event data
// for each selected one, then restyles and redraws all points as selected/unselected: seconds of
// WebGL at 10^5-10^6 points (in software rendering), and it repeats on every later redraw. Here,
// in Plotly's 'select' / 'lasso' drag modes, a drag on the plot area draws the outline on an SVG
// over the plot and sends only the region, in map coordinates; the server finds the points
// inside (regions.py) and the neighbour rings come back as marks. Plotly never sees the drag, so
// its point traces stay as they are. The outline stays (redrawn on zoom and pan) until the next
// selection, a double click, or a change of drag mode. A press without a drag is a click on the
// hovered point, as Plotly would report it.
function dvRegionSelect(gd, emitRegion, emitClick) {
  if (gd.__dvRegion) return;
  gd.__dvRegion = true;
  const NS = 'http://www.w3.org/2000/svg';
  const MINDRAG = 4;  // px: less is a click
  let drag = null, shown = null;  // shown: {mode, x: [...], y: [...]} in map coordinates

  const axes = () => {
    const fl = gd._fullLayout;
    return fl && fl.xaxis && fl.yaxis && !fl.scene ? [fl.xaxis, fl.yaxis] : null;
  };
  const mode = () => {
    const m = gd._fullLayout && gd._fullLayout.dragmode;
    return axes() && (m === 'select' || m === 'lasso') ? m : null;
  };

  function layer() {
    const box = gd.querySelector('.svg-container');
    if (!box) return null;
    let svg = gd.__dvRegionSvg;
    if (!svg || svg.parentNode !== box) {
      svg = document.createElementNS(NS, 'svg');
      svg.setAttribute('class', 'dv-region');
      svg.style.cssText = 'position:absolute;pointer-events:none;overflow:visible;';
      const path = document.createElementNS(NS, 'path');
      path.setAttribute('fill', 'rgba(0,0,0,0.04)');
      path.setAttribute('stroke', '#222');
      path.setAttribute('stroke-width', '1');
      path.setAttribute('stroke-dasharray', '4 3');
      svg.appendChild(path);
      box.appendChild(svg);
      gd.__dvRegionSvg = svg;
    }
    const [xa, ya] = axes();
    Object.assign(svg.style, {left: xa._offset + 'px', top: ya._offset + 'px', width: xa._length + 'px',
                              height: ya._length + 'px'});
    return svg;
  }

  // the outline through plot-area pixels [[px, py], ...]; none when empty
  function paint(pixels, closed) {
    const svg = axes() ? layer() : gd.__dvRegionSvg;
    if (!svg) return;
    const d = pixels.length ? 'M' + pixels.map(p => p[0].toFixed(1) + ',' + p[1].toFixed(1)).join('L')
      + (closed ? 'Z' : '') : '';
    svg.firstChild.setAttribute('d', d);
  }

  function corners(a, b) {
    return [[a[0], a[1]], [b[0], a[1]], [b[0], b[1]], [a[0], b[1]]];
  }

  function repaint() {
    if (!shown || !mode()) { shown = null; paint([], false); return; }
    const [xa, ya] = axes();
    paint(shown.x.map((x, i) => [xa.l2p(x), ya.l2p(shown.y[i])]), true);
  }

  function position(ev) {
    const r = gd.querySelector('.nsewdrag').getBoundingClientRect();
    return [ev.clientX - r.left, ev.clientY - r.top];
  }

  function extend(d, ev) {
    const p = position(ev);
    if (d.mode === 'lasso') d.pts.push(p);
    else d.pts = [d.pts[0], p];
    d.moved = d.moved || Math.abs(p[0] - d.pts[0][0]) + Math.abs(p[1] - d.pts[0][1]) >= MINDRAG;
  }

  function move(ev) {
    ev.stopPropagation();  // no hover labels (nor hover events) while the outline is drawn
    extend(drag, ev);
    if (drag.moved) paint(drag.mode === 'lasso' ? drag.pts : corners(drag.pts[0], drag.pts[drag.pts.length - 1]),
                          drag.mode !== 'lasso');
  }

  function up(ev) {
    window.removeEventListener('mousemove', move, true);
    window.removeEventListener('mouseup', up, true);
    const d = drag;
    drag = null;
    if (!d) return;
    extend(d, ev);
    if (!d.moved) {  // a click: the point under the mouse, as plotly_click reports it
      repaint();
      if (Array.isArray(gd._hoverdata) && gd._hoverdata.length) emitClick({points: gd._hoverdata});
      return;
    }
    const [xa, ya] = axes();
    const pts = d.mode === 'lasso' ? d.pts : corners(d.pts[0], d.pts[d.pts.length - 1]);
    shown = {mode: d.mode, x: pts.map(p => xa.p2l(p[0])), y: pts.map(p => ya.p2l(p[1]))};
    repaint();
    const region = d.mode === 'lasso' ? {lasso: [shown.x, shown.y]}
      : {box: [[shown.x[0], shown.x[2]], [shown.y[0], shown.y[2]]]};
    emitRegion(region);
  }

  gd.addEventListener('mousedown', ev => {
    const m = mode();
    const area = gd.querySelector('.nsewdrag');
    if (!m || ev.button !== 0 || !area || (ev.target.closest && ev.target.closest('.modebar, .legend'))) return;
    const r = area.getBoundingClientRect();
    if (ev.clientX < r.left || ev.clientX > r.right || ev.clientY < r.top || ev.clientY > r.bottom) return;
    ev.stopPropagation();  // Plotly's own drag (and its selection) never starts
    ev.preventDefault();
    drag = {mode: m, pts: [position(ev)], moved: false};
    window.addEventListener('mousemove', move, true);
    window.addEventListener('mouseup', up, true);
  }, true);
  gd.addEventListener('dblclick', () => { if (mode()) { shown = null; repaint(); } }, true);
  gd.on('plotly_relayout', repaint);
  gd.on('plotly_relayouting', repaint);
  gd.on('plotly_afterplot', repaint);
}
