"use strict";
// The run report's gallery and error list. Rows arrive as script files (report_data/): the index
// of every row first (coeReport.start), then chunks of details on demand (coeReport.addRows).
// Text from the data is only ever set as textContent or a property, never parsed as HTML.
(function () {
  const PAGE_SIZE = 48;
  const ERROR_PAGE_SIZE = 50;
  const DATA_DIR = "report_data";

  const state = {
    index: null,
    chunks: new Map(), // chunk number -> rows
    waiting: new Map(), // chunk number -> {promise, resolve, reject}
    order: [],
    page: 0,
    errorPage: 0,
    renderToken: 0,
  };

  function byId(id) {
    return document.getElementById(id);
  }

  function element(tag, properties, children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(properties || {})) {
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key === "data") Object.assign(node.dataset, value);
      else node[key] = value;
    }
    for (const child of children || []) {
      if (child !== null && child !== undefined) node.append(child);
    }
    return node;
  }

  function chunkFile(number) {
    return DATA_DIR + "/rows-" + String(number).padStart(5, "0") + ".js";
  }

  function loadChunk(number) {
    if (state.chunks.has(number)) return Promise.resolve(state.chunks.get(number));
    if (state.waiting.has(number)) return state.waiting.get(number).promise;
    const entry = {};
    entry.promise = new Promise((resolve, reject) => {
      entry.resolve = resolve;
      entry.reject = reject;
    });
    state.waiting.set(number, entry);
    const script = element("script", { src: chunkFile(number) });
    script.onerror = () => {
      state.waiting.delete(number);
      entry.reject(new Error("cannot load " + chunkFile(number)));
    };
    document.head.append(script);
    return entry.promise;
  }

  function rowsFor(positions) {
    const size = state.index.chunk_rows;
    const numbers = [...new Set(positions.map((position) => Math.floor(position / size)))];
    return Promise.all(numbers.map(loadChunk)).then(() =>
      positions.map((position) => state.chunks.get(Math.floor(position / size))[position % size])
    );
  }

  function fillSelect(select, names, valueOf) {
    names.forEach((name, position) => {
      select.append(element("option", { value: valueOf ? valueOf(name, position) : String(position), text: name }));
    });
  }

  function matches(position, filters) {
    const index = state.index;
    if (filters.label === "error" && index.error[position] < 0) return false;
    if (filters.label !== "" && filters.label !== "error" && index.label[position] !== Number(filters.label)) return false;
    if (filters.expert !== "" && index.expert[position] !== Number(filters.expert)) return false;
    if (filters.subject !== "" && index.subject[position] !== Number(filters.subject)) return false;
    if (filters.error === "none" && index.error[position] >= 0) return false;
    if (filters.error === "some" && index.error[position] < 0) return false;
    if (!["", "none", "some"].includes(filters.error) && index.error[position] !== Number(filters.error)) return false;
    if (filters.grade === "unread" && index.grade[position] >= 0) return false;
    if (!["", "unread"].includes(filters.grade) && index.grade[position] !== Number(filters.grade)) return false;
    return true;
  }

  function applyFilters() {
    const filters = {
      label: byId("filter-label").value,
      expert: byId("filter-expert").value,
      subject: byId("filter-subject").value,
      error: byId("filter-error").value,
      grade: byId("filter-grade").value,
    };
    const sort = byId("sort").value;
    const p = state.index.p_fake;
    const order = [];
    for (let position = 0; position < state.index.n; position += 1) {
      if (matches(position, filters)) order.push(position);
    }
    if (sort !== "input") {
      const sign = sort === "p_desc" ? -1 : 1;
      // Rows without p_fake (errors) go last either way; ties keep the input order.
      order.sort((a, b) => {
        if (p[a] === null || p[b] === null) return (p[a] === null) - (p[b] === null) || a - b;
        return sign * (p[a] - p[b]) || a - b;
      });
    }
    state.order = order;
    state.page = 0;
    renderGallery();
  }

  function pager(container, page, pages, onChange) {
    container.replaceChildren();
    if (pages <= 1) return;
    const go = (target) => () => onChange(Math.min(Math.max(target, 0), pages - 1));
    container.append(
      element("button", { type: "button", text: "« first", disabled: page === 0, onclick: go(0), data: { go: "first" } }),
      element("button", { type: "button", text: "‹ previous", disabled: page === 0, onclick: go(page - 1), data: { go: "previous" } }),
      element("span", { class: "where", text: "page " + (page + 1) + " of " + pages }),
      element("button", { type: "button", text: "next ›", disabled: page >= pages - 1, onclick: go(page + 1), data: { go: "next" } }),
      element("button", { type: "button", text: "last »", disabled: page >= pages - 1, onclick: go(pages - 1), data: { go: "last" } })
    );
  }

  function renderGallery() {
    const token = (state.renderToken += 1);
    const total = state.order.length;
    const pages = Math.max(1, Math.ceil(total / PAGE_SIZE));
    const first = state.page * PAGE_SIZE;
    const positions = state.order.slice(first, first + PAGE_SIZE);
    byId("matching").textContent =
      total === 0
        ? "no row matches (of " + state.index.n + ")"
        : "showing " + (first + 1) + "–" + (first + positions.length) + " of " + total + " matching (of " + state.index.n + ")";
    const change = (page) => {
      state.page = page;
      renderGallery();
    };
    pager(byId("pager-top"), state.page, pages, change);
    pager(byId("pager-bottom"), state.page, pages, change);
    rowsFor(positions).then(
      (rows) => {
        if (token !== state.renderToken) return; // a newer filter or page won
        const gallery = byId("gallery");
        gallery.replaceChildren(...rows.map((row, i) => card(row, positions[i])));
        gallery.dataset.ready = String(token);
      },
      (error) => showLoadError(byId("gallery"), error)
    );
  }

  function showLoadError(container, error) {
    container.replaceChildren(
      element("p", { class: "warning", text: error.message + ": keep report_data/ beside report.html" })
    );
  }

  function formatP(value) {
    return value === null || value === undefined ? "–" : value.toFixed(3);
  }

  function picture(row) {
    const frame = element("div", { class: "frame" });
    if (!row.thumbnail) {
      frame.append(element("div", { class: "missing", text: row.error ? "not analysed" : "no thumbnail" }));
      return frame;
    }
    const pic = element("span", { class: "pic" });
    const thumb = element("img", { class: "thumb", src: row.thumbnail, alt: "thumbnail of " + row.path, loading: "lazy" });
    thumb.onerror = () => frame.replaceChildren(element("div", { class: "missing", text: "thumbnail missing" }));
    pic.append(thumb);
    row.masks.forEach((mask, position) => {
      if (!mask.overlay) return;
      const overlay = element("img", { class: "overlay", src: mask.overlay, alt: "", data: { mask: String(position) } });
      overlay.hidden = !byId("show-masks").checked;
      pic.append(overlay);
    });
    frame.append(pic);
    return frame;
  }

  function setMasks(cardNode, visible) {
    cardNode.querySelectorAll("input.toggle-mask").forEach((box) => {
      box.checked = visible;
    });
    cardNode.querySelectorAll("img.overlay").forEach((overlay) => {
      overlay.hidden = !visible;
    });
    const all = cardNode.querySelector("input.toggle-masks");
    if (all) all.checked = visible;
  }

  function maskList(row, cardNode) {
    if (!row.masks.length) return null;
    const list = element("ul", { class: "artifacts" });
    const visible = byId("show-masks").checked;
    row.masks.forEach((mask, position) => {
      const box = element("input", { type: "checkbox", class: "toggle-mask", checked: visible && !!mask.overlay, disabled: !mask.overlay, data: { mask: String(position) } });
      box.onchange = () => {
        const overlay = cardNode.querySelector('img.overlay[data-mask="' + position + '"]');
        if (overlay) overlay.hidden = !box.checked;
      };
      const swatch = element("span", { class: "swatch" });
      swatch.style.background = mask.colour;
      const words = element("span", { class: "phrase", text: mask.category + ": " + mask.phrase + " (" + mask.expert + ")", title: mask.explanation || "" });
      list.append(element("li", {}, [element("label", {}, [box, swatch, words])]));
    });
    const all = element("input", { type: "checkbox", class: "toggle-masks", checked: visible });
    all.onchange = () => setMasks(cardNode, all.checked);
    return element("div", { class: "masks" }, [element("label", { class: "meta" }, [all, " masks on this image"]), list]);
  }

  function table(headers, rows) {
    return element("table", {}, [
      element("tr", {}, headers.map((text) => element("th", { text }))),
      ...rows.map((cells) => element("tr", {}, cells.map((text) => element("td", { text: String(text) })))),
    ]);
  }

  // What the file said about its origin, in a line: grade, what it says, who made or signed it.
  function provenanceLine(provenance) {
    if (!provenance || provenance.grade === "none") {
      if (provenance && provenance.error) return "provenance: not fully read (" + provenance.error + ")";
      return null;
    }
    const parts = [provenance.grade + ": " + provenance.says];
    if (provenance.source) parts.push("from " + provenance.source);
    if (provenance.generator) parts.push("generator " + provenance.generator);
    if (provenance.signer) parts.push("signed by " + provenance.signer);
    return "provenance " + parts.join(", ");
  }

  function card(row, position) {
    const label = row.error ? "error" : row.label;
    const node = element("article", { class: "card", data: { row: String(position), label } });
    const meta = [];
    if (row.decided_by) meta.push("decided by " + row.decided_by);
    if (row.subject) meta.push("subject: " + row.subject);
    if (row.image) meta.push(row.image);
    const body = element("div", { class: "body" }, [
      element("div", { class: "head" }, [
        element("span", { class: "label label-" + label, text: label }),
        element("span", { class: "p", text: "p_fake " + formatP(row.p_fake) }),
      ]),
      element("a", { class: "path", href: row.file, text: row.path, title: "open the image file" }),
      meta.length ? element("div", { class: "meta", text: meta.join(" · ") }) : null,
      row.duplicate_of ? element("div", { class: "meta", text: "same bytes as " + row.duplicate_of }) : null,
      row.error ? element("div", { class: "error-text", text: row.error.code + ": " + row.error.message }) : null,
      provenanceLine(row.provenance)
        ? element("div", { class: "provenance meta", data: { grade: row.provenance.grade }, text: provenanceLine(row.provenance) })
        : null,
      row.reason ? element("div", { class: "reason meta", text: row.reason }) : null,
      row.explanation ? element("div", { class: "explanation", text: row.explanation }) : null,
    ]);
    const masks = maskList(row, node);
    if (masks) body.append(masks);
    const findings = row.provenance ? row.provenance.findings : [];
    if (row.opinions.length || row.ranked.length || findings.length) {
      const details = element("details", {}, [element("summary", { text: "who said what" })]);
      if (findings.length) {
        details.append(table(["what the file says", "grade", "says", "detail"], findings.map((f) => [f.source, f.grade, f.says, f.detail])));
      }
      if (row.opinions.length) {
        details.append(table(["expert", "verdict", "p_fake"], row.opinions.map((o) => [o.expert, o.label, formatP(o.p_fake)])));
        row.opinions.filter((o) => o.explanation).forEach((o) => details.append(element("p", { text: o.expert + ": " + o.explanation })));
      }
      if (row.ranked.length) {
        details.append(table(["router's ranking", "P(correct)", "cost", "utility"], row.ranked.map((r) => [r.expert, formatP(r.p_correct), r.cost.toFixed(2), formatP(r.utility)])));
      }
      body.append(details);
    }
    node.append(picture(row), body);
    return node;
  }

  function renderErrors() {
    const errors = state.index.error_rows;
    const listTable = byId("error-list");
    byId("errors-none").hidden = errors.length > 0;
    listTable.hidden = errors.length === 0;
    const pages = Math.max(1, Math.ceil(errors.length / ERROR_PAGE_SIZE));
    const first = state.errorPage * ERROR_PAGE_SIZE;
    pager(byId("error-pager"), state.errorPage, pages, (page) => {
      state.errorPage = page;
      renderErrors();
    });
    listTable.tBodies[0].replaceChildren(
      ...errors.slice(first, first + ERROR_PAGE_SIZE).map(([position, path, code, message]) =>
        element("tr", { data: { row: String(position) } }, [
          element("td", { text: String(position + 1) }),
          element("td", { class: "text path", text: path }),
          element("td", { class: "text", text: code }),
          element("td", { class: "text", text: message }),
        ])
      )
    );
  }

  window.coeReport = {
    start(index) {
      state.index = index;
      fillSelect(byId("filter-label"), [...index.labels, "error"], (name, position) => (name === "error" ? "error" : String(position)));
      fillSelect(byId("filter-expert"), index.experts);
      fillSelect(byId("filter-subject"), index.subjects);
      byId("subject-control").hidden = index.subjects.length === 0;
      fillSelect(byId("filter-error"), index.errors);
      fillSelect(byId("filter-grade"), index.grades);
      for (const id of ["filter-label", "filter-expert", "filter-subject", "filter-grade", "filter-error", "sort"]) {
        byId(id).onchange = applyFilters;
      }
      byId("show-masks").onchange = () => {
        document.querySelectorAll("#gallery article.card").forEach((node) => setMasks(node, byId("show-masks").checked));
      };
      applyFilters();
      renderErrors();
    },
    addRows(number, rows) {
      state.chunks.set(number, rows);
      const entry = state.waiting.get(number);
      if (entry) {
        state.waiting.delete(number);
        entry.resolve(rows);
      }
    },
  };
})();
