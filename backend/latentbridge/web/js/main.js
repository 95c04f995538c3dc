// The page: asks for the token when the server wants one, opens the websocket, builds the form
// from what the server reports, and shows every job of every client.
import { LatentBridge } from "../sdk/index.js";
import { askForToken, forgetToken, storedToken } from "./auth.js";
import { Board } from "./board.js";
import { $, h, toast } from "./dom.js";
import { SubmitForm } from "./form.js";
import { GalleryView } from "./gallery.js";
import { QueueView } from "./queue.js";
import { Viewer } from "./viewer.js";

const lb = new LatentBridge(location.origin, { token: storedToken(), clientName: "latentbridge-web", reconnect: true });

/** Health without a token works on a server that has none; a token server answers 401 until the
 * user gives the right one. */
async function authorise() {
  try {
    await lb.health();
    return;
  } catch (error) {
    if (error.code !== "unauthorized") throw error;
  }
  const hadToken = !!lb.token;
  forgetToken();
  lb.token = null;
  await askForToken(async (token) => {
    lb.token = token;
    try {
      await lb.health();
      return true;
    } catch (error) {
      lb.token = null;
      if (error.code === "unauthorized") return false;
      throw error;
    }
  }, hadToken ? "The saved token is no longer accepted." : "");
}

function showModel(model) {
  const pill = $("#model-status");
  const progress = model.state === "downloading" && model.progress != null ? ` ${Math.round(model.progress * 100)}%` : "";
  pill.textContent = `${model.name ?? "no model"}${model.family ? ` · ${model.family}` : ""} · ${model.state}${progress}`;
  pill.className = `pill ${model.state}`;
  pill.title = model.error ?? [model.device, model.dtype].filter(Boolean).join(" · ");
}

function showConnection(state) {
  const el = $("#connection");
  el.textContent = state;
  el.className = `pill ${state === "connected" ? "ready" : "loading"}`;
}

async function main() {
  await authorise();
  const connection = await lb.connect();
  showConnection("connected");
  showModel(connection.model);
  connection.on("model", showModel);
  connection.on("disconnected", ({ reconnecting }) => showConnection(reconnecting ? "reconnecting…" : "disconnected"));
  connection.on("reconnected", (hello) => {
    showConnection("connected");
    showModel(hello.model);
  });
  connection.on("error", (error) => toast(error.message, "error"));
  if (lb.token) {
    const signOut = $("#sign-out");
    signOut.hidden = false;
    signOut.addEventListener("click", () => {
      forgetToken();
      location.reload();
    });
  }

  const [doc, models, loras] = await Promise.all([lb.openapi(), lb.models(), lb.loras()]);
  const board = new Board(lb, connection);
  const submit = async (request, images = {}, priority = "normal") => {
    const job = await connection.submit(request, { initImage: images.init, mask: images.mask, priority });
    board.follow(job);
    toast(job.position ? `Queued (#${job.position + 1})` : "Queued");
    return job;
  };
  const form = new SubmitForm({ capabilities: connection.capabilities, schemas: doc.components.schemas, models, loras, onSubmit: submit });
  // Another model loaded (by anyone): its family decides the samplers and tiling the form offers.
  let loaded = `${connection.model.name}/${connection.model.family}`;
  const followModel = async (model) => {
    if (model.state !== "ready" || `${model.name}/${model.family}` === loaded) return;
    loaded = `${model.name}/${model.family}`;
    const [caps, models] = await Promise.all([lb.capabilities(), lb.models()]);
    form.applyCapabilities(caps);
    form.setModels(models);
  };
  connection.on("model", (model) => followModel(model).catch((e) => toast(e.message, "error")));
  const viewer = new Viewer(board, {
    submit,
    edit: (request, images) => {
      form.load(request, images).catch((error) => toast(error.message, "error"));
      $("#submit-form").scrollIntoView({ behavior: "smooth" });
    },
    useAsInit: (png) => {
      form.setMode("img2img");
      form.setInit(new Blob([png], { type: "image/png" })).catch((error) => toast(error.message, "error"));
    },
    canUseInit: connection.capabilities.modes.includes("img2img"),
  });
  new QueueView(board);
  new GalleryView(board, viewer);
  await board.start();
  document.body.classList.add("ready");
}

main().catch((error) => {
  const banner = $("#fatal");
  banner.hidden = false;
  banner.replaceChildren(h("strong", {}, "The page could not start: "), error.message ?? String(error));
});
