-- spec/shell_tmux_spec.lua: `vdk shell` driven as a person drives it, in a
-- terminal (tmux send-keys / capture-pane): tab completion of methods and
-- module functions, pretty-printed results, an error and the shell going
-- on, multi-line input, explain on a backing-chain image, and the history
-- kept across sessions. Skips when tmux or line editing is missing.
local U = require "support.util"

local function have(cmd) return U.run("command -v %s", cmd) end

-- A private tmux server (own socket, no configuration), whatever the user runs.
local SOCKET = "vdkspec" .. tostring(os.time()) .. tostring(math.random(1e6))
local function tmux(fmt, ...)
  return "TERM=xterm tmux -L " .. SOCKET .. " -f /dev/null " .. fmt:format(...)
end

-- Poll the pane until pattern appears (bounded: about 10 s).
local function wait_for(session, pattern, plain)
  local screen
  for _ = 1, 100 do
    screen = U.must(tmux("capture-pane -p -t %s -S -200", session))
    if screen:find(pattern, 1, plain) then return screen end
    U.run("sleep 0.1")
  end
  error(("pane never showed %q; it shows:\n%s"):format(pattern, screen), 2)
end

-- Send text (typed literally) and key names (Tab, Enter, Up, C-d ...).
local KEY_NAMES = { Tab = true, Enter = true, Up = true, ["C-u"] = true, ["C-d"] = true }
local function keys(session, ...)
  for _, k in ipairs({ ... }) do
    if KEY_NAMES[k] then
      U.must(tmux("send-keys -t %s %s", session, k))
    else
      U.must(tmux("send-keys -t %s -l %s", session, U.q(k)))
    end
  end
end

local readline_ok = (function()
  local ok = pcall(require, "vdk.readline")
  if ok then return true end
  -- The launcher has it built in even when the stand-alone module is absent.
  local code = U.run3("%s shell -e %s", U.q(U.vdk), U.q('assert(require("vdk.readline"))'))
  return code == 0
end)()

describe("vdk shell in a terminal", function()
  if not have("tmux") or not readline_ok then
    pending("needs tmux and vdk.readline")
    return
  end
  local dir, session, hist, top
  local vdk_bin = U.abspath(U.vdk)

  setup(function()
    dir = U.tmpdir()
    hist = dir .. "/history"
    local base, mid = dir .. "/base.raw", dir .. "/mid.qcow2"
    top = dir .. "/top.qcow2"
    U.must("qemu-img create -q -f raw %s 4M && qemu-io -f raw -c 'write -P 0xaa 0 1M' %s",
      U.q(base), U.q(base))
    U.must("qemu-img create -q -f qcow2 -b base.raw -F raw %s", U.q(mid))
    U.must("qemu-io -c 'write -P 0xbb 64k 64k' %s", U.q(mid))
    U.must("qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 %s", U.q(top))
    U.must("qemu-io -c 'write -z 128k 64k' %s", U.q(top))
  end)

  local function start()
    session = "vdkspec" .. tostring(os.time()) .. tostring(math.random(1e6))
    U.must("cd %s && " .. tmux("new-session -d -s %s -x 150 -y 50 %s", session,
      U.q(("env VDK_HISTORY=%s TERM=xterm %s shell top.qcow2"):format(hist, vdk_bin))), U.q(dir))
    wait_for(session, "vdk>", true)
  end

  local function stop()
    if session then U.run(tmux("kill-server")) end
    session = nil
  end
  after_each(stop)

  it("completes, pretty-prints, recovers from errors, explains and keeps history", function()
    start()
    -- Completion of a method through the image's metatable.
    keys(session, "img:expl", "Tab")
    wait_for(session, "vdk> img:explain(", true)
    keys(session, "0x10010)", "Enter")
    local screen = wait_for(session, "answer: data, from layer 1", true)
    assert.truthy(screen:find("layer 0: top.qcow2 (qcow2)", 1, true), screen)
    assert.truthy(screen:find("layer 1: mid.qcow2 (qcow2)", 1, true), screen)
    assert.truthy(screen:find("L1 table [0] at 0x", 1, true), screen)
    assert.truthy(screen:find("bb bb bb bb", 1, true), screen)
    -- An error, and the shell goes on; completion of a module function.
    keys(session, 'error("boom")', "Enter")
    wait_for(session, "error: stdin:1: boom", true)
    keys(session, "vdk.size_to", "Tab")
    wait_for(session, "vdk.size_to_str(", true)
    keys(session, "img.size)", "Enter")
    wait_for(session, '"4 MiB"', true)
    -- Pretty printing: a table with offsets in hex and sizes in units.
    keys(session, "img:l1()", "Enter")
    screen = wait_for(session, "l2_coverage = 536870912 (512 MiB)", true)
    assert.truthy(screen:find("l2_offset = 0x", 1, true), screen)
    -- A bare size shows its units and hex.
    keys(session, "img.size", "Enter")
    wait_for(session, "4194304 (4 MiB, 0x400000)", true)
    -- Multi-line input continues with ">>".
    keys(session, "for i = 1, 2 do", "Enter")
    wait_for(session, "\n>>", true)
    keys(session, "print('line' .. i) end", "Enter")
    wait_for(session, "line2", true)
    -- Listing completions (two tabs) shows fields and methods.
    keys(session, "img.backing_f", "Tab", "Tab")
    screen = wait_for(session, "img.backing_format", true)
    assert.truthy(screen:find("img.backing_filename", 1, true), screen)
    keys(session, "C-u", "C-d")
    U.run("sleep 0.3")
    stop()

    -- A new session recalls the earlier lines with the Up key.
    local saved = U.read_file(hist)
    assert.truthy(saved:find("img:explain(0x10010)", 1, true), saved)
    assert.truthy(saved:find("for i = 1, 2 do print('line' .. i) end", 1, true), saved)
    start()
    keys(session, "Up")
    wait_for(session, "vdk> for i = 1, 2 do print('line' .. i) end", true)
    keys(session, "Up", "Up", "Up", "Up", "Up")
    wait_for(session, "vdk> img:explain(0x10010)", true)
    keys(session, "C-u", "C-d")
  end)
end)
