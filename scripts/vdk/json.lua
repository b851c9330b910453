-- vdk.json: a JSON encoder that prints exactly the way qemu-img does.
--
--   local json = require "vdk.json"
--   print(json.encode({ ["virtual-size"] = 1024, format = "raw" }))
--   print(json.encode(json.array({ 1, 2 })))
--
-- qemu-img prints its JSON (info, check, measure ...) pretty: 4 spaces per
-- level, `"key": value`, a comma at the end of every line but the last of a
-- container, non-ASCII characters as \uXXXX. It keeps objects in a hash
-- table and prints them in the table's bucket order, so the order of keys
-- looks random but never changes: "virtual-size" always comes before
-- "filename". To let `diff` compare vdk with qemu-img, this encoder puts
-- object keys in the same order (see qemu_order below).
--
-- Lua tables: a table whose keys are exactly 1..n (n > 0) is an array, any
-- other table an object; json.array{} and json.object{} force the kind
-- (useful for empty tables). Integers print as integers, other numbers with
-- 17 significant digits, json.null as null.
local json = {}

local ARRAY = { kind = "array" }
local OBJECT = { kind = "object" }

json.null = setmetatable({}, { __tostring = function() return "null" end })

function json.array(t) return setmetatable(t or {}, ARRAY) end
function json.object(t) return setmetatable(t or {}, OBJECT) end

-- qemu's QDict puts a key in bucket hash(key) % 512 and iterates buckets in
-- order. The hash is the "tdb" string hash of qobject/qdict.c, computed here
-- in 32-bit unsigned arithmetic.
local function qemu_bucket(key)
  local h = (0x238F13AF * #key) & 0xffffffff
  for i = 1, #key do
    h = (h + (key:byte(i) << (((i - 1) * 5) % 24))) & 0xffffffff
  end
  return ((1103515243 * h + 12345) & 0xffffffff) % 512
end

-- Keys in qemu's printing order (by bucket; ties by name, which qemu would
-- break by insertion order, newest first: no two keys vdk prints collide).
function json.qemu_order(keys)
  local bucket = {}
  for _, k in ipairs(keys) do bucket[k] = qemu_bucket(k) end
  table.sort(keys, function(a, b)
    if bucket[a] ~= bucket[b] then return bucket[a] < bucket[b] end
    return a < b
  end)
  return keys
end

local ESCAPES = {
  [0x22] = '\\"', [0x5C] = "\\\\", [0x08] = "\\b", [0x0C] = "\\f",
  [0x0A] = "\\n", [0x0D] = "\\r", [0x09] = "\\t",
}

-- \uXXXX for one code point, as a surrogate pair above U+FFFF.
local function uescape(cp)
  if cp >= 0x10000 then
    cp = cp - 0x10000
    return ("\\u%04X\\u%04X"):format(0xD800 | (cp >> 10), 0xDC00 | (cp & 0x3FF))
  end
  return ("\\u%04X"):format(cp)
end

-- A quoted JSON string: printable ASCII as is, the rest escaped; bytes that
-- are not valid UTF-8 become \uFFFD, as qemu does.
local function quote(s)
  local out = { '"' }
  local i, n = 1, #s
  while i <= n do
    local c = s:byte(i)
    if ESCAPES[c] then
      out[#out + 1] = ESCAPES[c]
      i = i + 1
    elseif c >= 0x20 and c < 0x7F then
      local j = s:find('[%c"\\\128-\255]', i) or n + 1
      out[#out + 1] = s:sub(i, j - 1)
      i = j
    elseif c < 0x80 then
      out[#out + 1] = uescape(c)
      i = i + 1
    else
      local ok, cp = pcall(utf8.codepoint, s, i)
      if ok and cp then
        out[#out + 1] = uescape(cp)
        i = i + #utf8.char(cp)
      else
        out[#out + 1] = "\\uFFFD"
        i = i + 1
      end
    end
  end
  out[#out + 1] = '"'
  return table.concat(out)
end
json.quote = quote

local function is_array(t)
  local mt = getmetatable(t)
  if mt == ARRAY then return true end
  if mt == OBJECT then return false end
  local n = #t
  if n == 0 then return false end
  local count = 0
  for _ in pairs(t) do count = count + 1 end
  return count == n
end

local encode_value

local function newline(level)
  return "\n" .. string.rep("    ", level)
end

local function encode_array(t, level, out)
  out[#out + 1] = "["
  for i = 1, #t do
    out[#out + 1] = (i > 1 and "," or "") .. newline(level + 1)
    encode_value(t[i], level + 1, out)
  end
  out[#out + 1] = newline(level) .. "]"
end

local function encode_object(t, level, out)
  local keys = {}
  for k in pairs(t) do
    if type(k) ~= "string" then
      error("json: object keys must be strings, got " .. type(k), 0)
    end
    keys[#keys + 1] = k
  end
  json.qemu_order(keys)
  out[#out + 1] = "{"
  for i, k in ipairs(keys) do
    out[#out + 1] = (i > 1 and "," or "") .. newline(level + 1) .. quote(k) .. ": "
    encode_value(t[k], level + 1, out)
  end
  out[#out + 1] = newline(level) .. "}"
end

function encode_value(v, level, out)
  local t = type(v)
  if v == json.null or v == nil then
    out[#out + 1] = "null"
  elseif t == "boolean" then
    out[#out + 1] = tostring(v)
  elseif math.type(v) == "integer" then
    out[#out + 1] = ("%d"):format(v)
  elseif t == "number" then
    out[#out + 1] = ("%.17g"):format(v)
  elseif t == "string" then
    out[#out + 1] = quote(v)
  elseif t == "table" then
    if is_array(v) then encode_array(v, level, out) else encode_object(v, level, out) end
  else
    error("json: cannot encode a " .. t, 0)
  end
end

-- The JSON text of v (no trailing newline).
function json.encode(v)
  local out = {}
  encode_value(v, 0, out)
  return table.concat(out)
end

return json
