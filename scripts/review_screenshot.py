#!/usr/bin/env python3
"""Screenshot of `facedb review` for the README, once every picture has loaded.

    scripts/review_screenshot.py DATASET OUT.png [FACEDB]

Starts `facedb review --no-open` on DATASET and Debian's chromedriver, drives headless Chromium
through the W3C WebDriver HTTP API (urllib only), waits until every image is decoded, saves PNG.
Needs chromium and chromium-driver (apt-get install chromium chromium-driver).
"""
import base64, json, socket, subprocess, sys, tempfile, time, urllib.request


def call(method, url, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.load(r)["value"]


def main():
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    dataset, out = sys.argv[1], sys.argv[2]
    facedb = sys.argv[3] if len(sys.argv) == 4 else "target/release/facedb"
    review = subprocess.Popen([facedb, "review", "--no-open", "--port", "0", dataset], stdout=subprocess.PIPE, text=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    driver = subprocess.Popen(["chromedriver", f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = review.stdout.readline().strip()
        base = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        profile = tempfile.mkdtemp()
        args = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
                "--window-size=1400,1100", "--disable-background-networking", f"--user-data-dir={profile}"]
        caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": args}}}}
        sid = call("POST", f"{base}/session", caps)["sessionId"]
        session = f"{base}/session/{sid}"
        call("POST", f"{session}/url", {"url": url})
        ready = "const i=[...document.images]; return i.length>2 && i.every(x=>x.complete && x.naturalWidth>0);"
        script = "document.querySelectorAll('img[loading=lazy]').forEach(i=>i.loading='eager');" + ready
        for _ in range(300):
            if call("POST", f"{session}/execute/sync", {"script": script, "args": []}):
                break
            time.sleep(0.1)
        else:
            broken = "return [...document.images].filter(x=>!(x.complete && x.naturalWidth>0)).map(x=>x.src)"
            sys.exit(f"images did not load: {call('POST', f'{session}/execute/sync', {'script': broken, 'args': []})}")
        png = base64.b64decode(call("GET", f"{session}/screenshot"))
        with open(out, "wb") as f:
            f.write(png)
        call("DELETE", session)
        print(f"screenshot: {out}")
    finally:
        driver.terminate()
        review.terminate()


if __name__ == "__main__":
    main()
