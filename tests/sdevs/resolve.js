// Resolves an `edition: 1.0.0` s.yaml the way `s deploy` does, with the Serverless Devs
// code itself (@serverless-devs/core, pinned in package.json), and writes the result as
// JSON. `s` 3.x hands such a file to core's execCommand (Serverless-Devs/Serverless-Devs,
// src/command/custom/v1/index.ts); this script runs the same steps as
// core/src/common/execCommand/index.ts (ExecCommand.init, serviceWithMany) and
// component/index.ts (handleCredentials, getNewActions), stopping where a component
// would be loaded and called with the resolved props.
//
//   node resolve.js resolve S_YAML OUT_JSON [ACCESS]    (ACCESS: what `s deploy -a` gives)
//   node resolve.js config-add ALIAS ACCOUNT_ID         (as `s config add`: ~/.s/access.yaml)
//
// The Serverless Devs home is $serverless_devs_config_home/.s (core's getRootHome), so a
// test points that at a temporary folder. The .env beside S_YAML is loaded by core
// itself (transforYamlPath -> setupEnv), exactly as for `s deploy`.
const path = require('path');
const fs = require('fs');
const core = require('@serverless-devs/core');

async function resolve(syaml, out, accessArg) {
  const globalArgs = accessArg ? { access: accessArg } : {};
  const originSpath = await core.getTemplatePath(syaml);
  const spath = await core.transforYamlPath(originSpath);
  const parse = new core.ParseVariable(spath);
  // Two passes, as execCommand: the second resolves magic variables inside `vars`.
  let parsed = await parse.init();
  parsed = await parse.init(parsed.realVariables);
  const realVariables = parsed.realVariables;
  const accessYaml = (await core.getYamlContent(path.join(core.getRootHome(), 'access.yaml'))) || {};
  const result = { access: realVariables.access === undefined ? null : realVariables.access,
                   services: {}, unparsed: [] };
  for (const serverName of Object.keys(realVariables.services || {})) {
    const again = await parse.clearGlobalKey('this').init({ services: {} });
    const configs = again.realVariables;
    const data = configs.services[serverName];
    // getProjectConfig: -a wins, then the service's access, then the top-level one.
    const access = globalArgs.access || data.access || configs.access;
    // handleCredentials: an alias known to access.yaml, or credentials from the environment.
    let credentials;
    if (access !== undefined && accessYaml[access] !== undefined) {
      credentials = await core.getCredential(access);
    }
    const fromEnv = await core.getCredentialFromEnv(access);
    if (fromEnv) credentials = fromEnv;
    // getNewActions: the third pass, with `this` and the credentials (${config(...)}).
    parse.setCredentials(credentials);
    const that = { name: serverName, access, actions: data.actions, component: data.component,
                   props: data.props };
    const third = await parse.init({ this: that });
    const service = third.realVariables.services[serverName];
    result.services[serverName] = {
      component: service.component,
      access: access === undefined ? null : access,
      credentials_found: Boolean(credentials && credentials.AccountID),
      props: service.props,
    };
  }
  // What core's warnUnparsedField would print (the ${env.X}/${vars.x} left as text).
  result.unparsed = parse.unparsedField || [];
  fs.writeFileSync(out, JSON.stringify(result, null, 2));
}

async function configAdd(alias, accountId) {
  // Only the AccountID matters here; the keys are placeholders that never leave this machine.
  await core.setKnownCredential({ AccountID: accountId, AccessKeyID: 'test-key-id',
                                  AccessKeySecret: 'test-key-secret' }, alias);
}

async function main() {
  const [verb, ...args] = process.argv.slice(2);
  if (verb === 'resolve') return resolve(...args);
  if (verb === 'config-add') return configAdd(...args);
  throw new Error(`usage: resolve.js resolve S_YAML OUT_JSON [ACCESS] | config-add ALIAS ACCOUNT_ID`);
}

main().then(() => process.exit(0), (err) => {
  console.error(`resolve.js: ${err && err.message ? err.message : err}`);
  process.exit(1);
});
