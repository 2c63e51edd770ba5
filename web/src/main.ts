// The learner's lesson page: sign in, POST /api/v1/rooms/join, connect with livekit-client, show the
// tutor's presence and session, and come back to the same tutor after a refresh or a network cut
// (seed 000's useLivekit: a reused dispatch means "keep waiting for the same agent").
import {
  ConnectionState,
  DisconnectReason,
  Participant,
  ParticipantKind,
  RemoteParticipant,
  Room,
  RoomEvent,
} from "livekit-client";

interface JoinDispatch {
  name: string;
  dispatchId: string | null;
  reused: boolean;
  phase: string;
}
interface JoinResponse {
  url: string;
  token: string;
  room: string;
  dispatch: JoinDispatch;
}
interface ApiErrorBody {
  error?: { code: string; message: string };
}
interface AgentStatus {
  dispatch: JoinDispatch;
  agentPresent: boolean;
  learners: number;
  expiresAt: string | null;
  idleSince: string | null;
}

// What tests and people can read: window.loqua mirrors what the page shows.
interface PageState {
  signedIn: boolean;
  room: string;
  agentName: string;
  connection: string;
  joins: number;
  reconnects: number;
  dispatch: JoinDispatch | null;
  agentIdentity: string | null;
  agentPresentAtMs: number | null; // performance.now() when the tutor was first seen on this page load
  sessionId: string | null;
  sessionStatus: string | null;
  error: string | null;
}

const TOKEN_KEY = "loqua.token";
const STATUS_POLL_MS = 3000;
const state: PageState = {
  signedIn: false,
  room: "",
  agentName: "",
  connection: "idle",
  joins: 0,
  reconnects: 0,
  dispatch: null,
  agentIdentity: null,
  agentPresentAtMs: null,
  sessionId: null,
  sessionStatus: null,
  error: null,
};
(window as unknown as { loqua: PageState }).loqua = state;

const $ = (id: string): HTMLElement => document.getElementById(id) as HTMLElement;

function log(message: string): void {
  const line = `${new Date().toISOString().slice(11, 23)} ${message}`;
  const el = $("log");
  el.textContent = `${el.textContent ?? ""}${line}\n`;
  el.scrollTop = el.scrollHeight;
  console.info(`[loqua] ${message}`);
}

function pill(el: HTMLElement, text: string, kind: "ok" | "wait" | "bad" | ""): void {
  el.textContent = text;
  el.className = `pill ${kind}`;
}

/** The sign-in token: from the link's #token= (then removed from the address bar), else this tab's storage. */
function signInToken(): string | null {
  const hash = new URLSearchParams(location.hash.slice(1));
  const fromLink = hash.get("token");
  if (fromLink) {
    sessionStorage.setItem(TOKEN_KEY, fromLink);
    history.replaceState(null, "", location.pathname + location.search);
  }
  return sessionStorage.getItem(TOKEN_KEY);
}

function subjectOf(jwt: string): string {
  try {
    const payload = JSON.parse(atob(jwt.split(".")[1].replace(/-/g, "+").replace(/_/g, "/")));
    return typeof payload.sub === "string" ? payload.sub : "";
  } catch {
    return "";
  }
}

async function api<T>(token: string, method: string, path: string, body?: unknown): Promise<T> {
  const resp = await fetch(path, {
    method,
    headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = (await resp.json().catch(() => ({}))) as T & ApiErrorBody;
  if (!resp.ok) {
    const err = data.error ?? { code: `HTTP_${resp.status}`, message: resp.statusText };
    if (resp.status === 401) sessionStorage.removeItem(TOKEN_KEY);
    throw new Error(`${err.code}: ${err.message}`);
  }
  return data;
}

function isTutor(p: Participant): boolean {
  return p.kind === ParticipantKind.AGENT && (p.attributes["lk.agent_name"] ?? state.agentName) === state.agentName;
}

function showTutor(room: Room): void {
  const tutors = [...room.remoteParticipants.values()].filter(isTutor);
  const el = $("agent");
  if (tutors.length === 0) {
    el.dataset.present = "false";
    if (state.dispatch?.phase === "Failed") {
      pill(el, "no tutor could be started; we keep trying", "bad");
      return;
    }
    const reused = state.dispatch?.reused;
    pill(el, reused ? "waiting for your tutor to come back…" : "waiting for your tutor…", "wait");
    return;
  }
  const tutor = tutors[0] as RemoteParticipant;
  if (state.agentIdentity !== tutor.identity) {
    if (state.agentIdentity) log(`a different tutor: ${tutor.identity} (was ${state.agentIdentity})`);
    else log(`tutor ${tutor.identity} is here`);
  }
  state.agentIdentity = tutor.identity;
  if (state.agentPresentAtMs === null) {
    state.agentPresentAtMs = Math.round(performance.now());
    log(`tutor present ${state.agentPresentAtMs} ms after page load`);
  }
  state.sessionId = tutor.attributes["loqua.session_id"] ?? null;
  state.sessionStatus = tutor.attributes["loqua.status"] ?? null;
  el.dataset.present = "true";
  el.dataset.identity = tutor.identity;
  pill(el, `${tutor.name || tutor.identity} is here${tutors.length > 1 ? ` (+${tutors.length - 1} more!)` : ""}`, "ok");
  const session = $("session");
  session.dataset.status = state.sessionStatus ?? "";
  session.textContent = state.sessionId ? `${state.sessionId} (${state.sessionStatus ?? "starting"})` : "starting…";
}

function showConnection(s: string): void {
  state.connection = s;
  const el = $("connection");
  el.dataset.state = s;
  const kind = s === "connected" ? "ok" : s === "reconnecting" || s === "connecting" ? "wait" : "bad";
  pill(el, s, kind);
}

function showDispatch(d: JoinDispatch): void {
  state.dispatch = d;
  $("dispatch").textContent =
    `${d.name}: ${d.phase}${d.dispatchId ? `, ${d.dispatchId}` : ""} (${d.reused ? "reused" : "new"})`;
}

async function pollStatus(token: string): Promise<void> {
  if (state.dispatch === null) return; // not joined yet: the object may not exist
  const path = `/api/v1/rooms/${encodeURIComponent(state.room)}/agent?agent_name=${encodeURIComponent(state.agentName)}`;
  try {
    const st = await api<AgentStatus>(token, "GET", path);
    if (state.dispatch) state.dispatch = { ...state.dispatch, phase: st.dispatch.phase, dispatchId: st.dispatch.dispatchId };
    const expires = st.expiresAt ? `, expires ${st.expiresAt}` : "";
    $("room-status").textContent = `${st.dispatch.phase}, ${st.learners} learner(s), tutor ${st.agentPresent ? "present" : "absent"}${expires}`;
  } catch (err) {
    $("room-status").textContent = String((err as Error).message);
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Join (ensures the one AgentDispatch), then connect; on a lost connection, join again with backoff. */
async function lesson(token: string): Promise<void> {
  let backoff = 1000;
  for (;;) {
    try {
      state.joins += 1;
      showConnection("connecting");
      const joined = await api<JoinResponse>(token, "POST", "/api/v1/rooms/join", {
        room_name: state.room,
        agent_name: state.agentName,
      });
      showDispatch(joined.dispatch);
      void pollStatus(token);
      log(
        joined.dispatch.reused
          ? `reused dispatch ${joined.dispatch.dispatchId ?? joined.dispatch.name}: waiting for the same tutor`
          : `new dispatch ${joined.dispatch.dispatchId ?? "(pending)"} for ${joined.dispatch.name}`,
      );
      const room = new Room({ disconnectOnPageLeave: true });
      const ended = new Promise<DisconnectReason | undefined>((resolve) => {
        room
          .on(RoomEvent.ParticipantConnected, () => showTutor(room))
          .on(RoomEvent.ParticipantDisconnected, (p) => {
            if (isTutor(p)) log(`tutor ${p.identity} left`);
            showTutor(room);
          })
          .on(RoomEvent.ParticipantAttributesChanged, () => showTutor(room))
          .on(RoomEvent.ConnectionStateChanged, (s: ConnectionState) => showConnection(String(s)))
          .on(RoomEvent.SignalReconnecting, () => {
            state.reconnects += 1;
            log("connection to the server lost: resuming the same session");
          })
          .on(RoomEvent.Reconnecting, () => {
            state.reconnects += 1;
            log("connection lost: reconnecting to the same room");
          })
          .on(RoomEvent.Reconnected, () => {
            log("reconnected");
            showTutor(room);
          })
          .on(RoomEvent.Disconnected, (reason?: DisconnectReason) => resolve(reason));
      });
      await room.connect(joined.url, joined.token);
      log(`connected to ${joined.room} as ${room.localParticipant.identity}`);
      backoff = 1000;
      showConnection("connected");
      showTutor(room);
      room.localParticipant.setMicrophoneEnabled(true).catch((err: Error) => log(`no microphone: ${err.message}`));
      const reason = await ended;
      if (reason === DisconnectReason.CLIENT_INITIATED) {
        log("left the room (page closed or reloaded)");
        return;
      }
      log(`disconnected (${reason === undefined ? "unknown" : DisconnectReason[reason]}); joining again`);
    } catch (err) {
      state.error = (err as Error).message;
      log(`join failed: ${state.error}`);
      showConnection("disconnected");
      if (!sessionStorage.getItem(TOKEN_KEY)) {
        $("signin").hidden = false;
        return;
      }
    }
    await sleep(backoff);
    backoff = Math.min(backoff * 2, 10000);
  }
}

function main(): void {
  const params = new URLSearchParams(location.search);
  $("signin-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, ($("signin-token") as HTMLTextAreaElement).value.trim());
    location.reload();
  });
  const token = signInToken();
  if (!token) {
    $("signin").hidden = false;
    log("not signed in");
    return;
  }
  state.signedIn = true;
  const user = subjectOf(token);
  state.agentName = params.get("agent") || "spanish-tutor";
  state.room = params.get("room") || `lesson-${user}`;
  $("learner").textContent = user || "(unknown)";
  $("room").textContent = state.room;
  void lesson(token);
  void pollStatus(token);
  setInterval(() => void pollStatus(token), STATUS_POLL_MS);
}

main();
