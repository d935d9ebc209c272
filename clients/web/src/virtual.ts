// A virtualised list: rows of one fixed height, only those in view (plus a margin) are in the
// DOM, so a run with 50,000 events scrolls and grows without re-rendering everything.
// Appending is O(1) until the next animation frame, which redraws the visible window once.
import { h } from "./dom.js";

export class VirtualList<T> {
  readonly element: HTMLDivElement;
  private readonly spacer: HTMLDivElement;
  private readonly items: T[] = [];
  private scheduled = false;
  /** Keep the newest row in view while the user has not scrolled up. */
  private followTail = true;

  constructor(
    private readonly rowHeight: number,
    private readonly renderRow: (item: T, index: number) => HTMLElement,
    className = "vlist",
  ) {
    this.spacer = h("div", { class: "vlist-spacer" });
    this.element = h("div", { class: className }, this.spacer);
    this.element.addEventListener("scroll", () => {
      const el = this.element;
      this.followTail = el.scrollTop + el.clientHeight >= el.scrollHeight - this.rowHeight * 2;
      this.schedule();
    });
  }

  get length(): number {
    return this.items.length;
  }

  at(index: number): T | undefined {
    return this.items[index];
  }

  push(...items: T[]): void {
    this.items.push(...items);
    this.schedule();
  }

  /** How many row elements are in the DOM now (tests check it stays small). */
  renderedRows(): number {
    return this.spacer.childElementCount;
  }

  private schedule(): void {
    if (this.scheduled) return;
    this.scheduled = true;
    requestAnimationFrame(() => {
      this.scheduled = false;
      this.draw();
    });
  }

  private draw(): void {
    const el = this.element;
    this.spacer.style.height = `${this.items.length * this.rowHeight}px`;
    if (this.followTail) el.scrollTop = el.scrollHeight;
    const view = el.clientHeight || 400;
    const first = Math.max(0, Math.floor(el.scrollTop / this.rowHeight) - 10);
    const last = Math.min(this.items.length, Math.ceil((el.scrollTop + view) / this.rowHeight) + 10);
    const rows: HTMLElement[] = [];
    for (let i = first; i < last; i++) {
      const row = this.renderRow(this.items[i], i);
      row.style.top = `${i * this.rowHeight}px`;
      row.style.height = `${this.rowHeight}px`;
      row.classList.add("vrow");
      rows.push(row);
    }
    this.spacer.replaceChildren(...rows);
  }
}
