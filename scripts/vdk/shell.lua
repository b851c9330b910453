-- vdk.shell: the interactive Lua 5.4 shell of `vdk shell` (and of any Lua
-- program: require("vdk.shell").start()).
--
--   shell.start{images = {paths}, format =, force_share =, history = path|false,
--               env = table, banner = true}
--                           open the images read-only (img, or img1, img2 ...),
--                           then read, evaluate and print until end of input
--   shell.new_env(opts)     -> env, images: the environment a shell runs in
--   shell.eval(env, code, name) -> true, results... | false, message
--                           run one chunk as the shell does (an expression
--                           first, then a statement)
--   shell.complete(env, word) -> list of completions of word
--   shell.show(...)         print values as the shell prints results
--
-- Line editing, history and completion come from vdk.readline (GNU
-- readline, bindings/lreadline.c); without it, or when the input is not a
-- terminal, lines are read plainly. The history lives in $VDK_HISTORY, or
-- ~/.vdk_history (an empty VDK_HISTORY turns it off). Incomplete chunks
-- continue on the next line (prompt ">>"), as in lua5.4; errors are shown
-- and the shell goes on.
local vdk = require "vdk"
local fmt = require "vdk.inspect_format"

local shell = {}

local KEYWORDS = { "and", "break", "do", "else", "elseif", "end", "false", "for", "function",
  "goto", "if", "in", "local", "nil", "not", "or", "repeat", "return", "then", "true",
  "until", "while" }

-- Fields of image objects (besides their methods), for completion.
shell.IMAGE_FIELDS = { "format", "filename", "size", "cluster_size", "readonly", "backing",
  "backing_filename", "backing_format", "full_backing_filename", "closed" }

-- ---------------------------------------------------------------- printing

-- One result as the shell shows it: integers with their size and hex form.
function shell.format_value(v)
  if math.type(v) == "integer" and (v >= 4096 or v <= -4096) then
    return ("%d (%s, 0x%x)"):format(v, v > 0 and vdk.size_to_str(v) or "negative", v)
  end
  return fmt.pretty(v)
end

function shell.show(...)
  local n = select("#", ...)
  for i = 1, n do
    io.stdout:write(shell.format_value((select(i, ...))), "\n")
  end
end

-- ---------------------------------------------------------------- environment

local HELP = [[
vdk shell: Lua 5.4 with the vdk module (as `vdk`). Images named on the
command line are open read-only as img (one) or img1, img2 ...
  img:header()            decoded header and feature bits
  img:l1() img:l2(i)      mapping tables (img:l2{guest_offset = N})
  img:explain(offset)     how a guest offset resolves, layer by layer
                          (img:explain(offset, {snapshot = "name"}) in a snapshot)
  img:refcount(host)      refcount of a host cluster; img:refmap(host): who uses it
  img:snapshot_table()    internal snapshots; img:extensions(): header extensions
  img:chain()             the backing chain; img:allocation(): bytes by kind and layer
  img:stats()             qemu-img check's cluster figures; img:layout(): metadata places
  img:hexdump(off, len [, {host = true}])   guest (or host file) bytes
  img:map_svg("map.svg")  a picture of the allocation map
  img:info() img:map()    as vdk info / vdk map
  img:check()             as vdk check (a report table); img:snapshots(): the snapshots
  open(path [, opts])     open another image (read-only unless readonly = false)
  show(v)                 print a value the way results print
Tab completes names, fields and methods; Ctrl-D leaves.]]

function shell.new_env(opts)
  opts = opts or {}
  local env = setmetatable({}, { __index = _G })
  env.vdk = vdk
  env.show = shell.show
  env.pretty = vdk.pretty
  env.hexdump = function(x, ...)
    if type(x) == "string" then return vdk.hexdump(x, ...) end
    return x:hexdump(...)
  end
  env.help = function() io.stdout:write(HELP, "\n") end
  env.open = function(path, o)
    o = o or {}
    local oo = { readonly = o.readonly ~= false, format = o.format, force_share = o.force_share }
    return vdk.open(path, oo)
  end
  env.exit = function(code) shell.exiting = code or 0 end
  env.quit = env.exit
  local images = {}
  for i, path in ipairs(opts.images or {}) do
    local img, msg = vdk.open(path, { format = opts.format, force_share = opts.force_share })
    if not img then
      for _, open_img in ipairs(images) do open_img:close() end
      return nil, msg
    end
    images[i] = img
  end
  if #images == 1 then
    env.img = images[1]
  else
    for i, img in ipairs(images) do env["img" .. i] = img end
  end
  if opts.env then for k, v in pairs(opts.env) do env[k] = v end end
  return env, images
end

-- ---------------------------------------------------------------- evaluation

local function traceback(msg)
  if type(msg) ~= "string" then
    local mt = getmetatable(msg)
    msg = mt and mt.__tostring and tostring(msg) or ("(error object is a %s value)"):format(type(msg))
  end
  local debug_env = os.getenv("VDK_DEBUG")
  if debug_env and debug_env ~= "" then return debug.traceback(msg, 2) end
  return msg
end

-- Compile code as the shell does: "return CODE" first (an expression), then
-- CODE. Returns the function, or nil, message, incomplete.
function shell.compile(env, code, name)
  local f = load("return " .. code, name, "t", env)
  if f then return f end
  local err
  f, err = load(code, name, "t", env)
  if f then return f end
  return nil, err, err:sub(-5) == "<eof>"
end

local function pack(...) return { n = select("#", ...), ... } end

function shell.eval(env, code, name)
  local f, err = shell.compile(env, code, name or "=stdin")
  if not f then return false, err end
  local r = pack(xpcall(f, traceback))
  if not r[1] then return false, r[2] end
  return table.unpack(r, 1, r.n)
end

-- ---------------------------------------------------------------- completion

local function sorted_unique(list)
  table.sort(list)
  local out = {}
  for i, s in ipairs(list) do
    if s ~= list[i - 1] then out[#out + 1] = s end
  end
  return out
end

-- The keys a value offers after "." (fields) or ":" (methods).
local function members(v, methods_only)
  local names = {}
  local function add_table(t, depth)
    if type(t) ~= "table" or depth > 4 then return end
    for k, val in pairs(t) do
      if type(k) == "string" and k:match("^[%a_][%w_]*$")
          and (not methods_only or type(val) == "function") then
        names[#names + 1] = k .. (type(val) == "function" and "(" or "")
      end
    end
    local mt = getmetatable(t)
    if type(mt) == "table" and type(mt.__index) == "table" then add_table(mt.__index, depth + 1) end
  end
  if type(v) == "table" then
    add_table(v, 0)
  else
    local ok, mt = pcall(getmetatable, v)
    if ok and type(mt) == "table" then
      if type(mt.__methods) == "table" then
        add_table(mt.__methods, 0)
        if not methods_only and mt.__name == "vdk.image" then
          for _, f in ipairs(shell.IMAGE_FIELDS) do names[#names + 1] = f end
        end
      elseif type(mt.__index) == "table" then
        add_table(mt.__index, 0)
      end
    end
  end
  return names
end

-- Resolve "a.b.c" in env without calling anything but plain indexing.
local function resolve(env, path)
  local v = env
  for name in path:gmatch("[^%.]+") do
    if not name:match("^[%a_][%w_]*$") then return nil end
    local ok, nv = pcall(function() return v[name] end)
    if not ok or nv == nil then return nil end
    v = nv
  end
  return v
end

function shell.complete(env, word)
  local prefix, sep, partial = word:match("^(.-)([%.:])([%w_]*)$")
  local names
  if prefix and prefix ~= "" then
    local base = resolve(env, prefix)
    if base == nil then return {} end
    names = members(base, sep == ":")
  else
    prefix, sep, partial = "", "", word
    names = {}
    for _, k in ipairs(KEYWORDS) do names[#names + 1] = k end
    for k, v in pairs(env) do
      if type(k) == "string" then names[#names + 1] = k .. (type(v) == "function" and "(" or "") end
    end
    for k, v in pairs(_G) do
      if type(k) == "string" then names[#names + 1] = k .. (type(v) == "function" and "(" or "") end
    end
  end
  local out = {}
  for _, n in ipairs(sorted_unique(names)) do
    if n:sub(1, #partial) == partial then out[#out + 1] = prefix .. sep .. n end
  end
  return out
end

-- ---------------------------------------------------------------- input

local function history_path()
  local p = os.getenv("VDK_HISTORY")
  if p then return p ~= "" and p or nil end
  local home = os.getenv("HOME")
  return home and (home .. "/.vdk_history") or nil
end

-- A line reader: readline on a terminal, plain io.read otherwise.
local function make_reader(env, opts)
  local interactive = opts.interactive
  if interactive == nil then interactive = vdk.isatty(0) end
  local ok, rl = pcall(require, "vdk.readline")
  if interactive and ok and opts.readline ~= false then
    local hist = opts.history
    if hist == nil then hist = history_path() end
    if hist then
      local f = io.open(hist, "a")
      if f then f:close() end
      rl.read_history(hist)
    end
    rl.set_completer(function(word) return shell.complete(env, word) end)
    return {
      read = function(prompt) return rl.readline(prompt) end,
      remember = function(chunk)
        rl.add_history(chunk)
        if hist then rl.append_history(1, hist) end
      end,
      close = function()
        if hist then rl.truncate_history(hist, 1000) end
        rl.set_completer(nil)
      end,
    }
  end
  return { plain = true, remember = function() end, close = function() end }
end

-- A plain line read, with a prompt on a terminal.
local function plain_read(interactive, prompt)
  if interactive then
    io.stdout:write(prompt)
    io.stdout:flush()
  end
  return io.read("l")
end

-- Read one chunk (continued while incomplete); nil at end of input.
local function read_chunk(env, reader, interactive)
  local read = reader.plain and function(p) return plain_read(interactive, p) end or reader.read
  local line = read("vdk> ")
  if not line then return nil end
  local code = line
  while true do
    if code:match("^%s*$") then return code end
    local f, _, incomplete = shell.compile(env, code, "=stdin")
    if f or not incomplete then return code end
    local more = read(">> ")
    if not more then return code end
    code = code .. "\n" .. more
  end
end

-- Evaluate and print one chunk; false when it failed.
function shell.run_line(env, code)
  if code:match("^%s*$") then return true end
  local r = pack(shell.eval(env, code, "=stdin"))
  if not r[1] then
    io.stdout:flush()
    io.stderr:write("error: ", tostring(r[2]), "\n")
    io.stderr:flush()
    return false
  end
  for i = 2, r.n do io.stdout:write(shell.format_value(r[i]), "\n") end
  io.stdout:flush()
  return true
end

function shell.start(opts)
  opts = opts or {}
  local env, images = shell.new_env(opts)
  if not env then return nil, images end
  local interactive = opts.interactive
  if interactive == nil then interactive = vdk.isatty(0) end
  if opts.banner ~= false and interactive then
    io.stdout:write(("vdk %s shell (%s). help() for the inspection helpers, Ctrl-D to leave.\n")
      :format(vdk.version, _VERSION))
    local names = {}
    for name in pairs(env) do
      if name:match("^img%d*$") then names[#names + 1] = name end
    end
    table.sort(names)
    for _, name in ipairs(names) do io.stdout:write(("%s = %s\n"):format(name, tostring(env[name]))) end
  end
  local reader = make_reader(env, opts)
  shell.exiting = nil
  while shell.exiting == nil do
    local code = read_chunk(env, reader, interactive)
    if not code then break end
    -- History files are line-based: a multi-line chunk is kept on one line.
    if not code:match("^%s*$") then reader.remember((code:gsub("\n", " "))) end
    shell.run_line(env, code)
  end
  reader.close()
  if interactive and shell.exiting == nil then io.stdout:write("\n") end
  for _, img in ipairs(images) do img:close() end
  return shell.exiting or 0
end

return shell
