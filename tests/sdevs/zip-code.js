// Zips a code folder as Serverless Devs does before uploading it to FC: its own zipper
// (@serverless-devs/zip) honouring the folder's .fcignore. The zip's path is the last line.
//   node zip-code.js CODE_DIR OUT_DIR
const zip = require('@serverless-devs/zip').default;

(async () => {
  const [codeUri, outputFilePath] = process.argv.slice(2);
  const { outputFile } = await zip({ codeUri, outputFilePath, outputFileName: 'code.zip',
                                     ignoreFiles: ['.fcignore'] });
  console.log(outputFile);
})().catch((err) => { console.error(err.message); process.exit(1); });
