// The label category of the item under review: one of the project's categories (set on the project
// page), sent to the server as soon as it is chosen.
import { api, h } from "./api.js";

const select = document.getElementById("item-category");
const status = document.getElementById("item-category-status");
const categories = JSON.parse(document.getElementById("project-categories").textContent || "[]");
let current = null;

/** Show `item`'s category; the select stays disabled when the project has no categories. */
export function showCategory(item) {
  current = item;
  const value = item.category || "";
  const names = categories.includes(value) || !value ? categories : [...categories, value];
  select.replaceChildren(
    h("option", { value: "" }, categories.length ? "object (no label)" : "object (add labels on the project page)"),
    ...names.map((n) => h("option", { value: n }, n)),
  );
  select.value = value;
  select.disabled = !categories.length;
  status.textContent = "";
}

select.addEventListener("change", async () => {
  const item = current;
  if (!item) return;
  try {
    const data = await api(`/web/expressions/${item.expression_id}/category/`, { method: "POST", json: { category: select.value } });
    item.category = data.category;
    status.textContent = "Saved";
  } catch (err) {
    status.textContent = err.message;
    select.value = item.category || "";
  }
  select.blur(); // number keys go back to choosing candidates
});
