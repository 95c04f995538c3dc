// Server-sent events (text/event-stream) from a fetch body, per the HTML standard's parsing rules:
// lines end in \n, \r\n or \r; `data:` lines join with \n; a blank line dispatches; `:` lines are
// comments (the server's keep-alives). EventSource itself cannot send an Authorization header
// and Node 20 has none, hence this small reader.
export async function* readSse(body) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    let event = "";
    let data = [];
    let endedWithCr = false;
    try {
        for (;;) {
            const { value: bytes, done } = await reader.read();
            if (done)
                return;
            const value = decoder.decode(bytes, { stream: true });
            // A \r\n split across two chunks is one line end, not two.
            buffer += endedWithCr && value.startsWith("\n") ? value.slice(1) : value;
            endedWithCr = value.endsWith("\r");
            const lines = buffer.split(/\r\n|\r|\n/);
            buffer = lines.pop() ?? ""; // a partial line waits for the next chunk
            for (const line of lines) {
                if (line === "") {
                    if (data.length)
                        yield { event: event || "message", data: data.join("\n") };
                    event = "";
                    data = [];
                    continue;
                }
                if (line.startsWith(":"))
                    continue;
                const colon = line.indexOf(":");
                const name = colon < 0 ? line : line.slice(0, colon);
                let fieldValue = colon < 0 ? "" : line.slice(colon + 1);
                if (fieldValue.startsWith(" "))
                    fieldValue = fieldValue.slice(1);
                if (name === "event")
                    event = fieldValue;
                else if (name === "data")
                    data.push(fieldValue);
            }
        }
    }
    finally {
        reader.releaseLock();
        await body.cancel().catch(() => undefined);
    }
}
