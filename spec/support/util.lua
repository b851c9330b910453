-- spec/support/util.lua: small helpers shared by the specs.
--   local U = require "support.util"
--   local dir = U.tmpdir()            -- fresh folder, removed at exit
--   local ok, out, code = U.run("qemu-img info %s", U.q(path))
local U = {}

U.build = os.getenv("VDK_BUILD_DIR") or "build"
U.src = os.getenv("VDK_SOURCE_DIR") or "."
U.vdk = U.build .. "/vdk"

-- Shell-quote one argument.
function U.q(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

local tmpdirs = {}
-- A fresh temporary folder; all are removed when the Lua state closes.
function U.tmpdir()
  local p = io.popen("mktemp -d /tmp/vdk-spec.XXXXXX")
  local d = p:read("l")
  p:close()
  tmpdirs[#tmpdirs + 1] = d
  return d
end
setmetatable(tmpdirs, { __gc = function(t)
  for _, d in ipairs(t) do os.execute("rm -rf " .. U.q(d)) end
end })

-- Run a shell command (format string + args); returns ok, output (stdout and
-- stderr together), exit code.
function U.run(fmt, ...)
  local cmd = select("#", ...) > 0 and fmt:format(...) or fmt
  local p = io.popen(cmd .. " 2>&1")
  local out = p:read("a")
  local ok, _, code = p:close()
  return ok == true, out, code
end

-- Like U.run but raises with the output when the command fails.
function U.must(fmt, ...)
  local ok, out, code = U.run(fmt, ...)
  if not ok then
    error(("command failed (%s): %s\n%s"):format(code, select("#", ...) > 0 and fmt:format(...) or fmt, out), 2)
  end
  return out
end

function U.read_file(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

function U.write_file(path, data)
  local f = assert(io.open(path, "wb"))
  f:write(data)
  f:close()
end

-- Deterministic pseudo-random bytes (xorshift), for reproducible data.
function U.bytes(n, seed)
  local x = (seed or 1) & 0xffffffff
  if x == 0 then x = 1 end
  local t = {}
  for i = 1, n do
    x = x ~ ((x << 13) & 0xffffffff)
    x = x ~ (x >> 17)
    x = x ~ ((x << 5) & 0xffffffff)
    t[i] = string.char(x & 0xff)
  end
  return table.concat(t)
end

-- Run a shell command with stdout and stderr kept apart; returns the exit
-- code (0 on success), stdout and stderr.
function U.run3(fmt, ...)
  local cmd = select("#", ...) > 0 and fmt:format(...) or fmt
  local errfile = os.tmpname()
  local p = io.popen(cmd .. " 2>" .. U.q(errfile))
  local out = p:read("a")
  local _, _, code = p:close()
  local err = U.read_file(errfile)
  os.remove(errfile)
  return code, out, err
end

-- Run the vdk launcher with shell-quoted arguments: code, stdout, stderr.
function U.vdk_cmd(...)
  local words = { U.q(U.vdk) }
  for _, a in ipairs({ ... }) do words[#words + 1] = U.q(a) end
  return U.run3(table.concat(words, " "))
end

-- Whether the vdk module has a driver for format.
function U.has_format(format)
  for _, name in ipairs(require("vdk").drivers()) do
    if name == format then return true end
  end
  return false
end

-- A JSON decoder (lua-cjson), or nil when it is not installed.
function U.cjson()
  local ok, cjson = pcall(require, "cjson")
  return ok and cjson or nil
end

-- path made absolute against the current directory (for commands run
-- after a cd).
function U.abspath(path)
  if path:sub(1, 1) == "/" then return path end
  local p = io.popen("pwd")
  local cwd = p:read("l")
  p:close()
  return cwd .. "/" .. path
end

return U
