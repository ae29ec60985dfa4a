#!/usr/bin/env node
// Checks a ROS template offline with Alibaba Cloud's own tools:
//
// - every resource is rebuilt with the ROS CDK L1 construct of its type (RosFunction,
//   RosTrigger, ... of @alicloud/ros-cdk-fc3, generated from ROS's published resource
//   specifications), whose validators run at synthesis: required properties, types,
//   ranges and allowed values; parameters become RosParameter (types ROS accepts);
// - the synthesized template must equal the one given: the L1 constructs drop what the
//   specification does not know, so an unknown or misspelled property (or top-level
//   section, or parameter attribute) shows up as a difference;
// - a trigger's TriggerConfig, a free-form map in ROS's specification, is checked against
//   the FC 3.0 API's own struct (TimerTriggerConfig, OSSTriggerConfig of the official
//   @alicloud/fc20230330 SDK): field names and types;
// - Ref and Fn::GetAtt name parameters, resources and attributes that exist (the
//   attributes the L1 construct declares).
//
// Usage: node validate-template.js < template.json   (the YAML parsed to JSON by the caller)
// Exit 0 and one summary line when valid; exit 1 and one line per problem otherwise.
'use strict';

const fs = require('fs');
const os = require('os');
const path = require('path');
const util = require('util');

const ros = require('@alicloud/ros-cdk-core');
const fc3 = require('@alicloud/ros-cdk-fc3');
const fcApi = require('@alicloud/fc20230330');

// Every L1 construct of the FC 3.0 package, by the ROS type it declares.
const L1 = {};
for (const cls of Object.values(fc3)) {
  if (typeof cls === 'function' && cls.ROS_RESOURCE_TYPE_NAME) L1[cls.ROS_RESOURCE_TYPE_NAME] = cls;
}

// FC 3.0 API structs for a trigger's config, by trigger type (FC API 2023-03-30).
const TRIGGER_CONFIG = { timer: fcApi.TimerTriggerConfig, oss: fcApi.OSSTriggerConfig };

// The runtimes FC 3.0 accepts, as the official SDK documents CreateFunctionInput.runtime
// ("Valid values: nodejs8, ..., python3.10, ..."): ROS's specification leaves Runtime a free
// string, so this is where a runtime FC does not have (python3.12, python3.6...) is caught.
function fcRuntimes() {
  const file = path.join(path.dirname(require.resolve('@alicloud/fc20230330')), 'models', 'CreateFunctionInput.d.ts');
  const match = /The runtime of the function\. Valid values: ([^\n]+?)\.\s*\n/.exec(fs.readFileSync(file, 'utf8'));
  if (!match) throw new Error(`no runtime list in ${file}: the FC SDK changed, update this check`);
  return new Set(match[1].replace(/,?\s+and\s+/, ', ').split(/,\s*/));
}

// Properties whose value is a free-form map in ROS's specification: passed through as they
// are (their keys are the user's, not property names).
const FREE_FORM = new Set(['EnvironmentVariables', 'TriggerConfig']);

// Pseudo parameters ROS resolves itself.
const PSEUDO = new Set(['ALIYUN::AccountId', 'ALIYUN::Region', 'ALIYUN::StackId', 'ALIYUN::StackName',
  'ALIYUN::NoValue', 'ALIYUN::TenantId']);

const SECTIONS = new Set(['ROSTemplateFormatVersion', 'Description', 'Parameters', 'Resources', 'Outputs']);

const PARAMETER_PROPS = {
  Type: 'type', Default: 'defaultValue', AllowedPattern: 'allowedPattern', AllowedValues: 'allowedValues',
  ConstraintDescription: 'constraintDescription', Description: 'description', MaxLength: 'maxLength',
  MaxValue: 'maxValue', MinLength: 'minLength', MinValue: 'minValue', NoEcho: 'noEcho', Label: 'label',
  AssociationProperty: 'associationProperty', AssociationPropertyMetadata: 'associationPropertyMetadata',
  Confirm: 'confirm', TextArea: 'textArea', Required: 'required', Placeholder: 'placeholder',
};

const problems = [];
const problem = (where, what) => problems.push(`${where}: ${what}`);

const isIntrinsic = (v) => v !== null && typeof v === 'object' && !Array.isArray(v) &&
  Object.keys(v).length === 1 && (Object.keys(v)[0] === 'Ref' || Object.keys(v)[0].startsWith('Fn::'));

// PascalCase template properties -> the L1 construct's camelCase props (VSwitchIds -> vSwitchIds).
function toProps(value, key) {
  if (Array.isArray(value)) return value.map((v) => toProps(v));
  if (value === null || typeof value !== 'object' || isIntrinsic(value) || FREE_FORM.has(key)) return value;
  const out = {};
  for (const [k, v] of Object.entries(value)) out[k.charAt(0).toLowerCase() + k.slice(1)] = toProps(v, k);
  return out;
}

function checkReferences(value, where, template, constructs) {
  if (Array.isArray(value)) return value.forEach((v, i) => checkReferences(v, `${where}[${i}]`, template, constructs));
  if (value === null || typeof value !== 'object') return;
  if (isIntrinsic(value)) {
    const [fn, arg] = Object.entries(value)[0];
    if (fn === 'Ref') {
      if (!PSEUDO.has(arg) && !(arg in (template.Parameters || {})) && !(arg in (template.Resources || {}))) {
        problem(where, `Ref to '${arg}', which is neither a parameter nor a resource`);
      }
    } else if (fn === 'Fn::GetAtt') {
      const [resource, attribute] = Array.isArray(arg) ? arg : [];
      const target = constructs[resource];
      if (!target) problem(where, `Fn::GetAtt of '${resource}', which is not a resource`);
      else if (!(`attr${attribute}` in target)) problem(where, `Fn::GetAtt: ${template.Resources[resource].Type} has no attribute '${attribute}'`);
    } else if (fn === 'Fn::Sub') {
      const body = Array.isArray(arg) ? arg[0] : arg;
      const vars = Array.isArray(arg) ? arg[1] || {} : {};
      for (const [, name] of String(body).matchAll(/\$\{([^}!]+)\}/g)) {
        if (!(name in vars) && !PSEUDO.has(name) && !(name in (template.Parameters || {})) &&
            !(name.split('.')[0] in (template.Resources || {}))) {
          problem(where, `Fn::Sub names '\${${name}}', which is neither a parameter, a resource nor a pseudo parameter`);
        }
      }
    } else {
      checkReferences(arg, `${where}.${fn}`, template, constructs);
    }
    return;
  }
  for (const [k, v] of Object.entries(value)) checkReferences(v, `${where}.${k}`, template, constructs);
}

// A value against an FC API model (darabonba Model: static names() and types()).
function checkModel(value, model, where) {
  if (isIntrinsic(value)) return;
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    return problem(where, `must be an object (FC API ${model.name})`);
  }
  const fields = Object.fromEntries(Object.entries(model.names()).map(([prop, wire]) => [wire, model.types()[prop]]));
  for (const [k, v] of Object.entries(value)) {
    if (!(k in fields)) {
      problem(`${where}.${k}`, `not a field of FC API ${model.name} (fields: ${Object.keys(fields).join(', ')})`);
    } else {
      checkType(v, fields[k], `${where}.${k}`);
    }
  }
}

function checkType(value, type, where) {
  if (isIntrinsic(value)) return;
  if (typeof type === 'function') return checkModel(value, type, where);
  if (type && type.type === 'array') {
    if (!Array.isArray(value)) return problem(where, 'must be a list');
    return value.forEach((v, i) => checkType(v, type.itemType, `${where}[${i}]`));
  }
  const js = { string: 'string', boolean: 'boolean', number: 'number', integer: 'number', long: 'number' }[type];
  if (js && typeof value !== js) problem(where, `must be a ${type}, not ${JSON.stringify(value)}`);
}

// Differences between the template given and what the CDK synthesized from it.
function diff(given, synthesized, where, out) {
  if (isPlainObject(given) && isPlainObject(synthesized)) {
    for (const k of new Set([...Object.keys(given), ...Object.keys(synthesized)])) {
      if (!(k in synthesized)) out.push(`${where}.${k}: dropped by the ROS CDK (not in ROS's specification, or not valid here)`);
      else if (!(k in given)) out.push(`${where}.${k}: added by the ROS CDK (${JSON.stringify(synthesized[k])})`);
      else diff(given[k], synthesized[k], `${where}.${k}`, out);
    }
  } else if (Array.isArray(given) && Array.isArray(synthesized) && given.length === synthesized.length) {
    given.forEach((v, i) => diff(v, synthesized[i], `${where}[${i}]`, out));
  } else if (!util.isDeepStrictEqual(given, synthesized)) {
    out.push(`${where}: ${JSON.stringify(given)} became ${JSON.stringify(synthesized)} in the ROS CDK's synthesis`);
  }
}

// The validators' message without the construct's creation stack.
function cdkMessage(err) {
  const lines = String(err.message).split('\n');
  const end = lines.findIndex((l) => l.startsWith('Object creation stack'));
  return lines.slice(0, end < 0 ? lines.length : end).map((l) => l.trim()).filter(Boolean)
    .join(' | ').replace(/^Resolution error: /, '');
}

const isPlainObject = (v) => v !== null && typeof v === 'object' && !Array.isArray(v);

function main() {
  const template = JSON.parse(fs.readFileSync(0, 'utf8'));
  if (template.ROSTemplateFormatVersion !== '2015-09-01') {
    problem('ROSTemplateFormatVersion', `must be '2015-09-01', not ${JSON.stringify(template.ROSTemplateFormatVersion)}`);
  }
  for (const section of Object.keys(template)) {
    if (!SECTIONS.has(section)) problem(section, 'not a section this check knows (ROS sections: ' + [...SECTIONS].join(', ') + ')');
  }

  const outdir = fs.mkdtempSync(path.join(os.tmpdir(), 'ros-cdk-'));
  const app = new ros.App({ outdir });
  const stack = new ros.Stack(app, 'Template');
  if (template.Description !== undefined) stack.templateOptions.description = template.Description;

  for (const [name, spec] of Object.entries(template.Parameters || {})) {
    const props = {};
    for (const [k, v] of Object.entries(spec)) {
      if (k in PARAMETER_PROPS) props[PARAMETER_PROPS[k]] = v;
      else problem(`Parameters.${name}.${k}`, 'not a parameter attribute ROS knows');
    }
    try {
      new ros.RosParameter(stack, name, props);
    } catch (err) {
      problem(`Parameters.${name}`, cdkMessage(err));
    }
  }

  const constructs = {};
  for (const [name, resource] of Object.entries(template.Resources || {})) {
    const where = `Resources.${name}`;
    const L1Class = L1[resource.Type];
    if (!L1Class) {
      problem(where, `type ${JSON.stringify(resource.Type)} is not one of ${Object.keys(L1).join(', ')}`);
      continue;
    }
    for (const k of Object.keys(resource)) {
      if (!['Type', 'Properties', 'DependsOn'].includes(k)) problem(`${where}.${k}`, 'not a resource attribute this check knows');
    }
    try {
      // true: enableResourcePropertyConstraint, the specification's validators run at synthesis
      constructs[name] = new L1Class(stack, name, toProps(resource.Properties || {}), true);
      for (const dep of [].concat(resource.DependsOn || [])) constructs[name].addRosDependency(dep);
    } catch (err) {
      problem(where, err.message);
    }
    if (resource.Type === 'ALIYUN::FC3::Function') {
      const runtime = (resource.Properties || {}).Runtime;
      const runtimes = fcRuntimes();
      if (typeof runtime === 'string' && !runtimes.has(runtime)) {
        problem(`${where}.Properties.Runtime`, `FC 3.0 has no runtime ${JSON.stringify(runtime)} (valid: ${[...runtimes].join(', ')})`);
      }
    }
    if (resource.Type === 'ALIYUN::FC3::Trigger') {
      const props = resource.Properties || {};
      const model = TRIGGER_CONFIG[props.TriggerType];
      if (!model) problem(`${where}.Properties.TriggerType`, `no FC API struct known here for trigger type ${JSON.stringify(props.TriggerType)}`);
      else checkModel(props.TriggerConfig, model, `${where}.Properties.TriggerConfig`);
    }
  }
  for (const [name, output] of Object.entries(template.Outputs || {})) {
    new ros.RosOutput(stack, name, { value: output.Value, description: output.Description });
  }
  // Each resource's validators on their own, so every broken resource is named (a full
  // synthesis stops at the first).
  for (const [name, construct] of Object.entries(constructs)) {
    try {
      stack.resolve(construct._toRosTemplate());
    } catch (err) {
      problem(`Resources.${name}`, cdkMessage(err));
    }
  }
  checkReferences(template.Resources, 'Resources', template, constructs);
  checkReferences(template.Outputs, 'Outputs', template, constructs);

  let synthesized;
  try {
    const assembly = app.synth();
    synthesized = assembly.getStackArtifact(stack.artifactId).template;
  } catch (err) {
    if (!problems.length) problem('template', cdkMessage(err));
  } finally {
    fs.rmSync(outdir, { recursive: true, force: true });
  }
  if (synthesized) {
    // the one thing the CDK adds on its own: a template tag
    const tags = ((synthesized.Metadata || {})['ALIYUN::ROS::Interface'] || {}).TemplateTags || [];
    if (!('Metadata' in template) && tags.length === 1 && tags[0] === 'Create by ROS CDK') delete synthesized.Metadata;
    const differences = [];
    diff(template, synthesized, '', differences);
    differences.forEach((d) => problems.push(d.replace(/^\./, '')));
  }

  if (problems.length) {
    problems.forEach((p) => console.log(p));
    process.exit(1);
  }
  const types = Object.values(template.Resources || {}).map((r) => r.Type);
  const counts = [...new Set(types)].map((t) => `${types.filter((x) => x === t).length} ${t}`).join(', ');
  console.log(`valid: ${Object.keys(template.Parameters || {}).length} parameters, ${counts}`);
}

main();
