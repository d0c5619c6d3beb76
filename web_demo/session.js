// The token's URL picks the transport: ws(s):// is a LiveKit server (LiveKit mode), anything else
// (the agent's own http URL) is the agent's embedded WHEP endpoint.
import { WhepSession } from "./whep.js";
import { LiveKitSession, isLiveKitUrl, DEFAULT_MODULE_URL } from "./livekit.js";

/** A session of either transport, not yet connected. `moduleUrl`: where livekit-client comes from. */
export function createSession({ room, token, url, mic = null, moduleUrl = null, onEvent, onTrack, onClosed }) {
  if (isLiveKitUrl(url)) {
    return new LiveKitSession({ url, token, mic, moduleUrl: moduleUrl || DEFAULT_MODULE_URL, onEvent, onTrack, onClosed });
  }
  return new WhepSession({ room, token, mic, onEvent, onTrack, onClosed });
}
